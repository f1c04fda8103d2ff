#!/usr/bin/env node
// The Node side of t/800-openapi.t: checks docs/openapi.json with a real
// OpenAPI validator and validates the answers the test collected against
// the document's own schemas, in one process.
//
//   node t/lib/openapi-check.js docs/openapi.json [samples.json]
//
// Output: TAP-like lines, "ok N - name" / "not ok N - name", each failure
// followed by "# ..." lines, then "1..N".  t/800 turns each into a test.
//
// 1. @seriousme/openapi-schema-validator: the document against the official
//    OpenAPI 3.1 JSON Schema, every $ref resolved; and a broken copy must be
//    refused (so that a validator that accepts anything would be noticed).
// 2. Every schema of components.schemas, and every schema of every
//    response, compiles with Ajv in JSON Schema 2020-12 mode (the dialect of
//    OpenAPI 3.1), formats checked by ajv-formats.
// 3. Each sample {name, method, path, status, contentType, body,
//    expectInvalid?, schemaRef?}: the status must be one the operation
//    lists, the content type one that status lists, and a JSON body must
//    validate against its schema.  schemaRef ("#/components/schemas/X")
//    validates a body (a WebSocket frame) against a schema directly.
//    expectInvalid: a control that must be refused.

'use strict';

const fs = require('fs');
const path = require('path');
const Ajv2020 = require('ajv/dist/2020').default;
const addFormats = require('ajv-formats').default;

const BASE = 'https://ahava.test/openapi.json';

let n = 0;
let failed = 0;
function result(ok, name, diag) {
    n++;
    if (!ok) failed++;
    const clean = String(name).replace(/[\r\n]+/g, ' ');
    process.stdout.write(`${ok ? 'ok' : 'not ok'} ${n} - ${clean}\n`);
    if (!ok && diag) {
        for (const line of String(diag).split('\n')) {
            process.stdout.write(`# ${line}\n`);
        }
    }
}

function pointerEscape(s) {
    return String(s).replace(/~/g, '~0').replace(/\//g, '~1');
}

function resolveLocal(doc, ref) {
    if (!ref.startsWith('#/')) throw new Error(`not a local $ref: ${ref}`);
    let cur = doc;
    for (const part of ref.slice(2).split('/')) {
        const key = part.replace(/~1/g, '/').replace(/~0/g, '~');
        if (cur === null || typeof cur !== 'object' || !(key in cur)) {
            throw new Error(`cannot resolve ${ref}`);
        }
        cur = cur[key];
    }
    return cur;
}

// the response object of an operation and status, and its JSON pointer
// (following one $ref to components.responses)
function responseOf(doc, op, opPointer, status) {
    const keys = [String(status), `${String(status)[0]}XX`, 'default'];
    for (const k of keys) {
        if (op.responses && op.responses[k]) {
            let resp = op.responses[k];
            let ptr = `${opPointer}/responses/${pointerEscape(k)}`;
            if (resp.$ref) {
                ptr = resp.$ref;
                resp = resolveLocal(doc, resp.$ref);
            }
            return { resp, ptr, key: k };
        }
    }
    return null;
}

function mediaBase(ct) {
    return String(ct || '').split(';')[0].trim().toLowerCase();
}

function errorsText(errors) {
    return (errors || []).slice(0, 12)
        .map((e) => `${e.instancePath || '(root)'} ${e.message}`
             + (e.params && Object.keys(e.params).length
                ? ` ${JSON.stringify(e.params)}` : '')
             + ` [${e.schemaPath}]`)
        .join('\n');
}

async function main() {
    const [docFile, samplesFile] = process.argv.slice(2);
    if (!docFile) {
        console.error('usage: openapi-check.js openapi.json [samples.json]');
        process.exit(2);
    }

    const text = fs.readFileSync(docFile, 'utf8');
    let doc;
    try {
        doc = JSON.parse(text);
        result(true, `${path.basename(docFile)} is JSON`);
    } catch (e) {
        result(false, `${path.basename(docFile)} is JSON`, e.message);
        process.stdout.write(`1..${n}\n`);
        return;
    }

    // --- 1. the real validator ------------------------------------------
    const { Validator } = await import('@seriousme/openapi-schema-validator');
    const v = new Validator();
    const res = await v.validate(JSON.parse(text));
    result(res.valid && v.version === '3.1',
           `the document is a valid OpenAPI ${v.version} document (@seriousme/openapi-schema-validator, every $ref resolved)`,
           JSON.stringify(res.errors, null, 1));

    // a broken copy must be refused: a response without its description,
    // and a $ref to nothing
    const broken1 = JSON.parse(text);
    const firstPath = Object.keys(broken1.paths)[0];
    const firstOp = Object.values(broken1.paths[firstPath])
        .find((o) => o && o.responses);
    const firstStatus = Object.keys(firstOp.responses)
        .find((k) => !firstOp.responses[k].$ref);
    delete firstOp.responses[firstStatus].description;
    const r1 = await new Validator().validate(broken1);
    result(!r1.valid, 'the validator refuses a copy with a response without description');

    const broken2 = JSON.parse(text);
    broken2.components.schemas.Visit.properties.patient = { $ref: '#/components/schemas/NoSuchSchema' };
    const r2 = await new Validator().validate(broken2);
    result(!r2.valid, 'the validator refuses a copy with a $ref to nothing');

    // --- 2. Ajv 2020-12 over the document's schemas ----------------------
    const ajv = new Ajv2020({ strict: false, allErrors: true, validateFormats: true });
    addFormats(ajv);
    // the document itself, as the resource its "#/..." references point into
    const resource = JSON.parse(text);
    resource.$id = BASE;
    ajv.addSchema(resource, BASE);

    const compiled = new Map();
    function validatorAt(pointer) {
        if (!compiled.has(pointer)) {
            compiled.set(pointer, ajv.compile({ $ref: `${BASE}${pointer}` }));
        }
        return compiled.get(pointer);
    }

    const bad = [];
    for (const name of Object.keys(doc.components.schemas || {})) {
        try {
            validatorAt(`#/components/schemas/${pointerEscape(name)}`);
        } catch (e) {
            bad.push(`${name}: ${e.message}`);
        }
    }
    let nresp = 0;
    for (const [p, item] of Object.entries(doc.paths)) {
        for (const [m, op] of Object.entries(item)) {
            if (!op || !op.responses) continue;
            for (const status of Object.keys(op.responses)) {
                const opPtr = `#/paths/${pointerEscape(p)}/${m}`;
                const r = responseOf(doc, op, opPtr, status);
                for (const media of Object.keys((r.resp && r.resp.content) || {})) {
                    if (!r.resp.content[media].schema) continue;
                    nresp++;
                    try {
                        validatorAt(`${r.ptr}/content/${pointerEscape(media)}/schema`);
                    } catch (e) {
                        bad.push(`${m.toUpperCase()} ${p} ${status} ${media}: ${e.message}`);
                    }
                }
            }
        }
    }
    result(bad.length === 0,
           `every schema compiles with Ajv (JSON Schema 2020-12): ${Object.keys(doc.components.schemas).length} components, ${nresp} response bodies`,
           bad.join('\n'));

    // --- 3. the samples ----------------------------------------------------
    if (samplesFile) {
        const samples = JSON.parse(fs.readFileSync(samplesFile, 'utf8'));
        for (const s of samples) {
            checkSample(doc, s, validatorAt);
        }
    }

    process.stdout.write(`1..${n}\n`);
}

function checkSample(doc, s, validatorAt) {
    const label = `${s.name}: ${s.status} ${s.method.toUpperCase()} ${s.path}`;
    let why = [];

    if (s.schemaRef) {
        // a WebSocket frame, or another body checked against a schema
        checkBody(s, validatorAt, s.schemaRef, `${s.name}: valid ${s.schemaRef}`,
                  `${s.name}: refused by ${s.schemaRef} (a control)`);
        return;
    }

    const item = doc.paths[s.path];
    const op = item && item[s.method];
    if (!op) {
        result(false, label, `no operation ${s.method.toUpperCase()} ${s.path} in the document`);
        return;
    }

    const opPtr = `#/paths/${pointerEscape(s.path)}/${s.method}`;
    const r = responseOf(doc, op, opPtr, s.status);
    if (!r) {
        result(false, label,
               `status ${s.status} is not documented for ${s.method.toUpperCase()} ${s.path} `
               + `(documented: ${Object.keys(op.responses).join(', ')})`);
        return;
    }

    const media = mediaBase(s.contentType);
    const content = r.resp.content;

    if (!content) {
        // documented without a body (101, 206, 304, 416): nothing to validate
        if (media === 'application/json') {
            why.push(`a JSON body, but ${s.status} documents none`);
        }
        result(why.length === 0, label, why.join('\n'));
        return;
    }

    const mt = content[media] ? media
        : Object.keys(content).find((k) => k.endsWith('/*')
                                     && media.startsWith(k.slice(0, -1)));
    if (!mt) {
        result(false, label, `content type "${s.contentType}" is not documented for ${s.status} `
               + `(documented: ${Object.keys(content).join(', ')})`);
        return;
    }

    if (!content[mt].schema) {
        result(true, label);
        return;
    }

    const isJson = /^application\/(.+\+)?json$/.test(mt);
    if (isJson && s.bodyNotJson) {
        result(false, label, `the body is not JSON: ${String(s.body).slice(0, 300)}`);
        return;
    }
    if (!isJson && (s.body === null || s.body === undefined)) {
        // binary content, not kept by the test: the type was checked
        result(true, label);
        return;
    }

    checkBody(s, validatorAt, `${r.ptr}/content/${pointerEscape(mt)}/schema`, label,
              `${label}: refused by its schema (a control)`);
}

// a sample's body against the schema at ptr: valid, or refused when it is a
// control (expectInvalid)
function checkBody(s, validatorAt, ptr, validName, controlName) {
    let ok;
    let errs = '';
    try {
        const val = validatorAt(ptr);
        ok = val(s.body);
        errs = errorsText(val.errors);
    } catch (e) {
        ok = false;
        errs = e.message;
    }

    if (s.expectInvalid) {
        result(!ok, controlName, `accepted: ${JSON.stringify(s.body).slice(0, 400)}`);
    } else {
        result(ok, validName, `${errs}\nbody: ${JSON.stringify(s.body).slice(0, 800)}`);
    }
}

main().catch((e) => {
    result(false, 'openapi-check.js ran to its end', e && e.stack || String(e));
    process.stdout.write(`1..${n}\n`);
    process.exitCode = 1;
});
