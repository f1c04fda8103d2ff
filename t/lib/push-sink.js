// A stand-in for Expo's push API (https://exp.host/--/api/v2/push/send) for
// the tests of ahava-worker: it records every request and answers tickets
// the way Expo does.
//
//   node push-sink.js LOG_FILE
//
// Prints {"listening": PORT} once it accepts connections.  Every request is
// appended to LOG_FILE as one JSON line {"path", "headers", "body"}.  Tokens
// decide the answer: one containing "unregistered" gets a DeviceNotRegistered
// ticket; one containing "busy" makes the whole request 503 the first time
// it is seen (and 200 after); one containing "throttle" gets 429 the first
// two times; one containing "slow" holds the answer 3 s the first time it
// is seen; one containing "ratelimited" gets a MessageRateExceeded ticket;
// one containing "rejected" makes the whole request 400 (as Expo refuses a
// request mixing two projects' tokens); every other token gets
// {"status":"ok"}.
'use strict';

const fs = require('node:fs');
const http = require('node:http');

const log = process.argv[2];
const seen = new Map();

function times(token) {
    const n = (seen.get(token) || 0) + 1;
    seen.set(token, n);
    return n;
}

const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let body;
        try { body = JSON.parse(text); } catch (e) { body = text; }
        fs.appendFileSync(log, JSON.stringify({ path: req.url, headers: req.headers, body }) + '\n');
        const msgs = Array.isArray(body) ? body : [];
        let status = 200;
        for (const m of msgs) {
            if (String(m.to).includes('busy') && times(m.to) === 1) status = 503;
            if (String(m.to).includes('throttle') && times(m.to) <= 2) status = 429;
            if (String(m.to).includes('rejected')) status = 400;
        }
        if (!Array.isArray(body)) status = 400;
        const slow = msgs.some((m) => String(m.to).includes('slow') && times(m.to) === 1);
        const data = msgs.map((m) => String(m.to).includes('unregistered')
            ? { status: 'error', message: `"${m.to}" is not a registered push notification recipient`,
                details: { error: 'DeviceNotRegistered' } }
            : String(m.to).includes('ratelimited')
            ? { status: 'error', message: 'too many messages', details: { error: 'MessageRateExceeded' } }
            : { status: 'ok', id: `ticket-${Math.random().toString(16).slice(2)}` });
        const reply = status === 200 ? JSON.stringify({ data }) : JSON.stringify({ errors: [{ code: 'X', message: `status ${status}` }] });
        setTimeout(() => {
            res.writeHead(status, { 'content-type': 'application/json' });
            res.end(reply);
        }, slow ? 3000 : 0);
    });
});
server.keepAliveTimeout = 60000;
server.listen(0, '127.0.0.1', () => {
    process.stdout.write(JSON.stringify({ listening: server.address().port }) + '\n');
});
process.on('SIGTERM', () => process.exit(0));
