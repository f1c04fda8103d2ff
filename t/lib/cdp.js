#!/usr/bin/env node
// Headless Chromium over the DevTools protocol, for the browser tests
// (t/810-console.t), driven by Perl over stdin/stdout, one JSON object a line.
//
//   node t/lib/cdp.js --chromium /usr/bin/chromium --profile DIR [--log FILE]
//                     [--width 1280 --height 900]
//
// Starts Chromium (--headless=new --remote-debugging-port=0), reads the port
// from DIR/DevToolsActivePort, connects to the browser's endpoint with the
// npm package `ws` and attaches to one page (flat sessions).  Then prints
//   {"event":"ready","browser":"Chrome/...","port":N}
// and answers each command with {"seq":S,"ok":true,...} or
// {"seq":S,"ok":false,"error":"..."}:
//   {"seq":1,"cmd":"open","url":"http://..."}     navigate, wait for load
//   {"seq":2,"cmd":"eval","expr":"..."}           Runtime.evaluate, promises
//        awaited, the value returned by value: {"value":...}
//   {"seq":3,"cmd":"screenshot","path":"x.png"}   the whole page as PNG: {"bytes":N}
//   {"seq":4,"cmd":"problems"}                    {"value":[...]} every uncaught
//        exception, console.error/assert and Log entry of level error seen so far
//   {"seq":5,"cmd":"quit"}                        close Chromium, exit
// End of stdin quits too.  Chromium's output goes to --log.
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const { spawn } = require('child_process');
let WebSocket;
try {
    WebSocket = require(path.join(__dirname, '..', 'node_modules', 'ws'));
} catch (e) {
    WebSocket = require('ws');
}

const opt = { chromium: '/usr/bin/chromium', width: '1280', height: '900' };
for (let i = 2; i < process.argv.length; i += 2) {
    opt[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
}
if (!opt.profile) {
    process.stderr.write('cdp.js: --profile DIR is required\n');
    process.exit(2);
}

function out(obj) {
    process.stdout.write(JSON.stringify(obj) + '\n');
}

function fail(msg) {
    out({ event: 'fatal', error: msg });
    shutdown(1);
}

// ---- Chromium

const logFd = opt.log ? fs.openSync(opt.log, 'a') : 'ignore';
const portFile = path.join(opt.profile, 'DevToolsActivePort');
try { fs.unlinkSync(portFile); } catch (e) { /* not there */ }

const chrome = spawn(opt.chromium, [
    '--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run',
    '--no-default-browser-check', '--disable-dev-shm-usage',
    '--disable-background-networking', '--disable-component-update',
    '--disable-extensions', '--disable-sync', '--mute-audio',
    '--disable-features=Translate,MediaRouter,OptimizationHints',
    '--user-data-dir=' + opt.profile, '--remote-debugging-port=0',
    '--window-size=' + opt.width + ',' + opt.height, 'about:blank',
], { stdio: ['ignore', logFd, logFd] });

let chromeExited = false;
let quitting = false;
chrome.on('exit', (code, sig) => {
    chromeExited = true;
    if (!quitting) fail('chromium exited (' + (sig || code) + ')');
});
chrome.on('error', (e) => fail('cannot start chromium: ' + e.message));

// ---- the protocol: one socket to the browser, flat sessions

let sock = null;
let nextId = 1;
const pending = new Map();
const problems = [];
let sessionId = null;
let loadWaiters = [];

function send(method, params, session) {
    return new Promise((resolve, reject) => {
        const id = nextId++;
        pending.set(id, { resolve, reject, method });
        const msg = { id, method, params: params || {} };
        if (session) msg.sessionId = session;
        sock.send(JSON.stringify(msg));
    });
}

const page = (method, params) => send(method, params, sessionId);

function describe(remote) {
    if (!remote) return '';
    if (remote.type === 'string') return remote.value;
    if (remote.description !== undefined) return remote.description;
    if (remote.value !== undefined) return JSON.stringify(remote.value);
    return remote.type;
}

function onEvent(msg) {
    if (msg.sessionId !== sessionId) return;
    const p = msg.params || {};
    switch (msg.method) {
    case 'Page.loadEventFired': {
        const w = loadWaiters;
        loadWaiters = [];
        w.forEach((f) => f());
        break;
    }
    case 'Runtime.exceptionThrown': {
        const d = p.exceptionDetails || {};
        problems.push({ kind: 'exception', text: (d.exception && d.exception.description) || d.text,
                        url: d.url, line: d.lineNumber });
        break;
    }
    case 'Runtime.consoleAPICalled':
        if (p.type === 'error' || p.type === 'assert') {
            problems.push({ kind: 'console.' + p.type, text: (p.args || []).map(describe).join(' ') });
        }
        break;
    case 'Log.entryAdded':
        if (p.entry && p.entry.level === 'error') {
            problems.push({ kind: 'log.' + p.entry.source, text: p.entry.text, url: p.entry.url });
        }
        break;
    default:
        break;
    }
}

async function waitPortFile() {
    const deadline = Date.now() + 30000;
    for (;;) {
        try {
            const lines = fs.readFileSync(portFile, 'utf8').split('\n');
            if (lines.length >= 2 && /^\d+$/.test(lines[0]) && lines[1].startsWith('/')) {
                return { port: Number(lines[0]), path: lines[1].trim() };
            }
        } catch (e) { /* not written yet */ }
        if (chromeExited) throw new Error('chromium exited before it listened');
        if (Date.now() > deadline) throw new Error('no DevToolsActivePort in 30 s');
        await new Promise((r) => setTimeout(r, 50));
    }
}

async function attach() {
    const { port, path: wsPath } = await waitPortFile();
    sock = new WebSocket('ws://127.0.0.1:' + port + wsPath, { perMessageDeflate: false, maxPayload: 256 << 20 });
    await new Promise((resolve, reject) => {
        sock.once('open', resolve);
        sock.once('error', reject);
    });
    sock.on('message', (data) => {
        const msg = JSON.parse(data.toString('utf8'));
        if (msg.id !== undefined) {
            const p = pending.get(msg.id);
            if (!p) return;
            pending.delete(msg.id);
            if (msg.error) p.reject(new Error(p.method + ': ' + msg.error.message));
            else p.resolve(msg.result);
        } else {
            onEvent(msg);
        }
    });
    sock.on('close', () => { if (!quitting) fail('DevTools socket closed'); });
    const version = await send('Browser.getVersion');
    const { targetInfos } = await send('Target.getTargets');
    let target = targetInfos.find((t) => t.type === 'page');
    const targetId = target ? target.targetId
        : (await send('Target.createTarget', { url: 'about:blank' })).targetId;
    sessionId = (await send('Target.attachToTarget', { targetId, flatten: true })).sessionId;
    await page('Page.enable');
    await page('Runtime.enable');
    await page('Log.enable');
    await page('Emulation.setDeviceMetricsOverride', {
        width: Number(opt.width), height: Number(opt.height), deviceScaleFactor: 1, mobile: false,
    });
    out({ event: 'ready', browser: version.product, port });
}

// ---- commands

async function run(cmd) {
    switch (cmd.cmd) {
    case 'open': {
        const loaded = new Promise((resolve, reject) => {
            loadWaiters.push(resolve);
            setTimeout(() => reject(new Error('no load event in 30 s')), 30000);
        });
        const r = await page('Page.navigate', { url: cmd.url });
        if (r.errorText) throw new Error('navigation failed: ' + r.errorText);
        await loaded;
        return {};
    }
    case 'eval': {
        const r = await page('Runtime.evaluate', {
            expression: cmd.expr, returnByValue: true, awaitPromise: true, userGesture: true,
        });
        if (r.exceptionDetails) {
            const d = r.exceptionDetails;
            throw new Error('evaluate: ' + ((d.exception && d.exception.description) || d.text));
        }
        return { value: r.result.value === undefined ? null : r.result.value };
    }
    case 'screenshot': {
        const m = await page('Page.getLayoutMetrics');
        const size = m.cssContentSize || m.contentSize;
        const r = await page('Page.captureScreenshot', {
            format: 'png', captureBeyondViewport: true,
            clip: { x: 0, y: 0, width: Math.ceil(size.width), height: Math.min(Math.ceil(size.height), 8000), scale: 1 },
        });
        const buf = Buffer.from(r.data, 'base64');
        fs.writeFileSync(cmd.path, buf);
        return { bytes: buf.length };
    }
    case 'problems':
        return { value: problems.slice() };
    case 'quit':
        shutdown(0);
        return {};
    default:
        throw new Error('unknown command ' + JSON.stringify(cmd.cmd));
    }
}

function shutdown(code) {
    if (quitting) return;
    quitting = true;
    const done = () => process.exit(code);
    const kill = () => {
        if (!chromeExited) {
            try { chrome.kill('SIGTERM'); } catch (e) { /* gone */ }
        }
    };
    if (chromeExited) { done(); return; }
    chrome.once('exit', done);
    if (sock && sock.readyState === WebSocket.OPEN) {
        send('Browser.close').catch(() => {});
        setTimeout(kill, 3000);
    } else {
        kill();
    }
    setTimeout(() => {
        try { chrome.kill('SIGKILL'); } catch (e) { /* gone */ }
        done();
    }, 8000);
}

process.on('SIGTERM', () => shutdown(143));
process.on('SIGINT', () => shutdown(130));

attach().then(() => {
    const rl = readline.createInterface({ input: process.stdin });
    rl.on('line', (line) => {
        if (!line.trim()) return;
        let cmd;
        try {
            cmd = JSON.parse(line);
        } catch (e) {
            out({ ok: false, error: 'bad JSON: ' + e.message });
            return;
        }
        run(cmd).then(
            (res) => out(Object.assign({ seq: cmd.seq, ok: true }, res)),
            (e) => out({ seq: cmd.seq, ok: false, error: e.message }));
    });
    rl.on('close', () => shutdown(0));
}, (e) => fail(e.message));
