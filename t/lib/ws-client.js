#!/usr/bin/env node
// A WebSocket client for the tests (t/5*-ws-*.t), built on the npm package
// `ws` (t/package.json), driven by Perl (t/lib/Ahava/Test/WS.pm) over
// stdin/stdout with one JSON object per line.  One process holds any number
// of sockets, each named by the "id" the commands carry.
//
// Commands (stdin), each may carry "seq": it is echoed in an "ack" event once
// the command took effect (for "send": once the frame was written):
//   {"cmd":"connect","id":"c1","url":"ws://...","headers":{...},
//    "protocols":["bearer","<jwt>"],"autoPong":true,"perMessageDeflate":true}
//   {"cmd":"send","id":"c1","text":"..."}          a text frame
//   {"cmd":"send","id":"c1","base64":"..."}        a binary frame
//   {"cmd":"ping","id":"c1","data":"..."}          a ping frame
//   {"cmd":"close","id":"c1","code":1000,"reason":"..."}
//   {"cmd":"terminate","id":"c1"}                  drop the TCP connection
//   {"cmd":"pause","id":"c1"} / {"cmd":"resume","id":"c1"}
//                                                  stop / restart reading the socket
//   {"cmd":"exit"}
// Events (stdout): {"id","event","t"(epoch seconds),...}
//   open {status, headers, protocol, extensions, localPort}
//   unexpected-response {status, headers, body}
//   message {data, binary}                         (binary data in base64)
//   ping {data} / pong {data}
//   close {code, reason}
//   error {message}
//   ack {seq, cmd} / nack {seq, cmd, message}
'use strict';

const path = require('path');
const readline = require('readline');
let WebSocket;
try {
    WebSocket = require(path.join(__dirname, '..', 'node_modules', 'ws'));
} catch (e) {
    WebSocket = require('ws');
}

const sockets = new Map();

function now() {
    return (performance.timeOrigin + performance.now()) / 1000;
}

function emit(id, event, fields) {
    process.stdout.write(JSON.stringify(Object.assign({ id, event, t: now() }, fields || {})) + '\n');
}

function ack(cmd) {
    if (cmd.seq !== undefined) {
        emit(cmd.id, 'ack', { seq: cmd.seq, cmd: cmd.cmd });
    }
}

function nack(cmd, message) {
    emit(cmd.id, 'nack', { seq: cmd.seq, cmd: cmd.cmd, message });
}

function headersOf(res) {
    const h = {};
    for (const [k, v] of Object.entries(res.headers || {})) {
        h[k.toLowerCase()] = Array.isArray(v) ? v.join(', ') : String(v);
    }
    return h;
}

function connect(cmd) {
    const id = cmd.id;
    const opts = {
        headers: cmd.headers || {},
        handshakeTimeout: cmd.handshakeTimeout || 10000,
        followRedirects: false,
        autoPong: cmd.autoPong === undefined ? true : !!cmd.autoPong,
        perMessageDeflate: cmd.perMessageDeflate === undefined ? true : !!cmd.perMessageDeflate,
        maxPayload: 16 * 1024 * 1024,
        skipUTF8Validation: false,
    };
    const protocols = cmd.protocols && cmd.protocols.length ? cmd.protocols : undefined;
    let ws;
    try {
        ws = new WebSocket(cmd.url, protocols, opts);
    } catch (e) {
        emit(id, 'error', { message: String(e && e.message || e) });
        emit(id, 'close', { code: 1006, reason: '' });
        return;
    }
    const st = { ws, upgrade: null };
    sockets.set(id, st);

    ws.on('upgrade', (res) => {
        st.upgrade = { status: res.statusCode, headers: headersOf(res) };
    });
    ws.on('open', () => {
        const u = st.upgrade || { status: 101, headers: {} };
        emit(id, 'open', { status: u.status, headers: u.headers,
                           protocol: ws.protocol, extensions: ws.extensions,
                           localPort: ws._socket ? ws._socket.localPort : null });
    });
    ws.on('unexpected-response', (req, res) => {
        const chunks = [];
        let got = 0, reported = false;
        const len = res.headers['content-length'] === undefined
            ? -1 : Number(res.headers['content-length']);
        const done = () => {
            if (reported) {
                return;
            }
            reported = true;
            emit(id, 'unexpected-response', { status: res.statusCode,
                headers: headersOf(res), body: Buffer.concat(chunks).toString('utf8') });
            req.destroy();
            res.destroy();
            sockets.delete(id);
            emit(id, 'close', { code: 1006, reason: '' });
        };
        res.on('data', (c) => {
            chunks.push(c);
            got += c.length;
            if (len >= 0 && got >= len) {
                done();
            }
        });
        res.on('end', done);
        res.on('error', done);
        res.on('close', done);
        if (len === 0) {
            setImmediate(done);
        }
    });
    ws.on('message', (data, isBinary) => {
        if (isBinary) {
            emit(id, 'message', { binary: true, data: Buffer.from(data).toString('base64') });
        } else {
            emit(id, 'message', { binary: false, data: data.toString('utf8') });
        }
    });
    ws.on('ping', (data) => emit(id, 'ping', { data: data.toString('utf8') }));
    ws.on('pong', (data) => emit(id, 'pong', { data: data.toString('utf8') }));
    ws.on('error', (e) => emit(id, 'error', { message: String(e && e.message || e) }));
    ws.on('close', (code, reason) => {
        if (!sockets.has(id)) {
            return;             // reported by unexpected-response
        }
        emit(id, 'close', { code, reason: reason.toString('utf8') });
        sockets.delete(id);
    });
    ack(cmd);
}

function withSocket(cmd, fn) {
    const st = sockets.get(cmd.id);
    if (!st) {
        nack(cmd, 'no such socket');
        return;
    }
    try {
        fn(st.ws);
    } catch (e) {
        nack(cmd, String(e && e.message || e));
    }
}

function handle(cmd) {
    switch (cmd.cmd) {
    case 'connect':
        connect(cmd);
        break;
    case 'send':
        withSocket(cmd, (ws) => {
            const data = cmd.base64 !== undefined ? Buffer.from(cmd.base64, 'base64') : cmd.text;
            ws.send(data, { binary: cmd.base64 !== undefined }, (err) => {
                if (err) { nack(cmd, String(err.message || err)); } else { ack(cmd); }
            });
        });
        break;
    case 'ping':
        withSocket(cmd, (ws) => {
            ws.ping(cmd.data || '', undefined, (err) => {
                if (err) { nack(cmd, String(err.message || err)); } else { ack(cmd); }
            });
        });
        break;
    case 'close':
        withSocket(cmd, (ws) => { ws.close(cmd.code, cmd.reason); ack(cmd); });
        break;
    case 'terminate':
        withSocket(cmd, (ws) => { ws.terminate(); ack(cmd); });
        break;
    case 'pause':
        withSocket(cmd, (ws) => { ws._socket.pause(); ack(cmd); });
        break;
    case 'resume':
        withSocket(cmd, (ws) => { ws._socket.resume(); ack(cmd); });
        break;
    case 'exit':
        for (const st of sockets.values()) {
            try { st.ws.terminate(); } catch (e) { /* gone */ }
        }
        process.exit(0);
        break;
    default:
        nack(cmd, 'unknown command');
    }
}

const rl = readline.createInterface({ input: process.stdin, terminal: false });
rl.on('line', (line) => {
    if (!line.trim()) {
        return;
    }
    let cmd;
    try {
        cmd = JSON.parse(line);
    } catch (e) {
        emit(null, 'nack', { message: 'bad JSON command: ' + e.message });
        return;
    }
    handle(cmd);
});
// Perl went away: so do we
rl.on('close', () => handle({ cmd: 'exit' }));
process.stdout.on('error', () => process.exit(0));
