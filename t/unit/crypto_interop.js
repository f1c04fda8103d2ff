'use strict';

/*
 * Interop of ngx_ahava_crypto with Node's built-in crypto, both ways, with
 * fresh random keys on every run.  Node plays the role of the existing Node
 * app: it writes v2 and legacy-hex values, and reads our v2 values.
 *
 *     node crypto_interop.js path/to/crypto_cli
 *
 * TAP output; exit status 1 if any test failed.
 */

const crypto = require('crypto');
const { spawnSync } = require('child_process');

const cli = process.argv[2];

if (!cli) {
    console.error('usage: node crypto_interop.js path/to/crypto_cli');
    process.exit(2);
}

const tests = [];

function test(desc, fn) {
    tests.push([desc, fn]);
}

function run(args, input) {
    const r = spawnSync(cli, args, { input, maxBuffer: 1 << 26 });

    if (r.error) {
        throw r.error;
    }

    return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

/* what the Node app does */

function nodeEncrypt(key, plain, ivLen, legacy) {
    const iv = crypto.randomBytes(ivLen);
    const c = crypto.createCipheriv('aes-256-gcm', key, iv);
    const ct = Buffer.concat([c.update(plain, 'utf8'), c.final()]);
    const tag = c.getAuthTag();

    if (legacy) {
        return [iv, tag, ct].map((b) => b.toString('hex')).join(':');
    }

    return 'v2:' + [iv, tag, ct].map((b) => b.toString('base64')).join(':');
}

function nodeDecrypt(key, text) {
    const m = /^v2:([A-Za-z0-9+/=]*):([A-Za-z0-9+/=]*):([A-Za-z0-9+/=]*)$/
        .exec(text);

    if (!m) {
        throw new Error('not a v2 value: ' + JSON.stringify(text));
    }

    const iv = Buffer.from(m[1], 'base64');
    const tag = Buffer.from(m[2], 'base64');
    const d = crypto.createDecipheriv('aes-256-gcm', key, iv);

    d.setAuthTag(tag);

    return Buffer.concat([d.update(Buffer.from(m[3], 'base64')), d.final()])
        .toString('utf8');
}

function cEncrypt(key, plain) {
    const r = run(['enc', key.toString('base64')], Buffer.from(plain, 'utf8'));

    if (r.status !== 0) {
        throw new Error('crypto_cli enc failed: ' + r.stderr);
    }

    return r.stdout.toString().replace(/\n$/, '');
}

function cDecrypt(keys, text) {
    return run(['dec', ...keys.map((k) => k.toString('base64'))],
               Buffer.from(text + '\n'));
}

function same(r, plain) {
    return r.status === 0 && r.stdout.equals(Buffer.from(plain, 'utf8'));
}

const key = crypto.randomBytes(32);
const oldKey = crypto.randomBytes(32);

const plains = {
    'empty': '',
    'ASCII': 'Visit 42: wound dressed, next visit Tuesday.',
    'UTF-8': 'מטופל יציב — café 日本語 💊\nline two: a:b:c',
    '20000 chars': 'abcdefghijklmnopqrstuvwxyz'.repeat(770).slice(0, 20000),
    '6000 multi-byte chars': 'שלום🙂'.repeat(1200),
};

for (const [name, plain] of Object.entries(plains)) {
    test(`Node v2 -> C, ${name}`, () =>
        same(cDecrypt([key], nodeEncrypt(key, plain, 12, false)), plain));

    test(`Node legacy hex (12-byte IV) -> C, ${name}`, () =>
        same(cDecrypt([key], nodeEncrypt(key, plain, 12, true)), plain));

    test(`Node legacy hex (16-byte IV) -> C, ${name}`, () =>
        same(cDecrypt([key], nodeEncrypt(key, plain, 16, true)), plain));

    test(`C -> Node, ${name}`, () =>
        nodeDecrypt(key, cEncrypt(key, plain)) === plain);
}

test('C output has a 12-byte IV and a 16-byte tag', () => {
    const parts = cEncrypt(key, 'x').split(':');

    return parts.length === 4 && parts[0] === 'v2'
        && Buffer.from(parts[1], 'base64').length === 12
        && Buffer.from(parts[2], 'base64').length === 16;
});

test('C output under the wrong key is rejected by Node', () => {
    try {
        nodeDecrypt(oldKey, cEncrypt(key, 'secret'));
    } catch (e) {
        return true;
    }

    return false;
});

test('rotation: Node value under the old key, C with [new, old]', () =>
    same(cDecrypt([key, oldKey], nodeEncrypt(oldKey, 'rotated', 12, false)),
         'rotated'));

test('rotation: Node legacy value under the old key, C with [new, old]', () =>
    same(cDecrypt([key, oldKey], nodeEncrypt(oldKey, 'rotated', 16, true)),
         'rotated'));

test('rotation: old-key value without the old key fails (exit 1)', () => {
    const r = cDecrypt([key], nodeEncrypt(oldKey, 'rotated', 12, false));

    return r.status === 1 && r.stdout.length === 0;
});

test('Node value with a flipped tag bit is rejected by C (exit 1)', () => {
    const parts = nodeEncrypt(key, 'tamper me', 12, false).split(':');
    const tag = Buffer.from(parts[2], 'base64');

    tag[0] ^= 1;
    parts[2] = tag.toString('base64');

    const r = cDecrypt([key], parts.join(':'));

    return r.status === 1 && r.stdout.length === 0;
});

test('Node legacy value with a flipped ciphertext bit is rejected by C', () => {
    const parts = nodeEncrypt(key, 'tamper me', 12, true).split(':');
    const ct = Buffer.from(parts[2], 'hex');

    ct[0] ^= 1;
    parts[2] = ct.toString('hex');

    return cDecrypt([key], parts.join(':')).status === 1;
});

console.log(`1..${tests.length}`);

let failed = 0;

tests.forEach(([desc, fn], i) => {
    let pass;

    try {
        pass = fn() === true;
    } catch (e) {
        pass = false;
        console.log(`# ${e.message}`);
    }

    if (!pass) {
        failed++;
    }

    console.log(`${pass ? '' : 'not '}ok ${i + 1} - ${desc}`);
});

process.exit(failed ? 1 : 0);
