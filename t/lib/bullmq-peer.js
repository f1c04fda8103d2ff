// The real BullMQ (npm bullmq 6.7.0) as a peer of the tests: what a Node
// app's producers, workers and dashboards see of the jobs nginx enqueues.
//
//   node bullmq-peer.js jobs   REDIS_URL Q1,Q2,...      → JSON {queue: [{id,name,data,opts,state}]} (getJobs)
//   node bullmq-peer.js counts REDIS_URL QUEUE          → JSON getJobCounts()
//   node bullmq-peer.js add    REDIS_URL QUEUE NAME DATA → the id of a job a Node Queue added
//   node bullmq-peer.js work   REDIS_URL QUEUE N        → a Worker completes N jobs; JSON
//        {processed:[{id,name,data}], events:[ids QueueEvents saw completed], counts}
//   node bullmq-peer.js addmany REDIS_URL QUEUE JSON     → Queue.addBulk of [{name,data,opts}]; {ids}
//   node bullmq-peer.js watch  REDIS_URL QUEUE N         → QueueEvents (from the stream's start)
//        until N jobs completed or failed: {completed:{id:returnvalue}, failed:{id:reason}, counts}
//   node bullmq-peer.js job    REDIS_URL QUEUE ID        → Queue.getJob(ID) as JSON, with its state
//   node bullmq-peer.js events REDIS_URL QUEUE [ID]      → the events stream (of one job):
//        [{ms, event, jobId, ...fields}]
//
// Prints one JSON line on stdout; exits non-zero on failure or after
// PEER_TIMEOUT_S seconds (20).
'use strict';

const { Queue, Worker, QueueEvents } = require('bullmq');

const [cmd, url, queueName, ...rest] = process.argv.slice(2);
const u = new URL(url);
const connection = {
    host: u.hostname, port: Number(u.port || 6379),
    db: Number((u.pathname || '/0').slice(1) || 0),
    maxRetriesPerRequest: null,
};

setTimeout(() => { console.error('bullmq-peer: timed out'); process.exit(3); },
           1000 * Number(process.env.PEER_TIMEOUT_S || 20)).unref();

async function jobsOf(name) {
    const queue = new Queue(name, { connection });
    const jobs = await queue.getJobs(['prioritized', 'waiting', 'active', 'delayed',
                                      'completed', 'failed'], 0, -1, true);
    const out = [];
    for (const j of jobs) {
        out.push({ id: j.id, name: j.name, data: j.data, opts: j.opts,
                   state: await j.getState(), timestamp: j.timestamp,
                   priority: j.priority, processedOn: j.processedOn,
                   finishedOn: j.finishedOn, attemptsMade: j.attemptsMade,
                   failedReason: j.failedReason, processedBy: j.processedBy });
    }
    await queue.close();
    return out;
}

async function main() {
    if (cmd === 'jobs') {
        const out = {};
        for (const name of queueName.split(',')) {
            out[name] = await jobsOf(name);
        }
        console.log(JSON.stringify(out));
        return;
    }
    const queue = new Queue(queueName, { connection });
    try {
        if (cmd === 'counts') {
            console.log(JSON.stringify(await queue.getJobCounts()));
        } else if (cmd === 'add') {
            const [name, data] = rest;
            const job = await queue.add(name, JSON.parse(data), { attempts: 3 });
            console.log(JSON.stringify({ id: job.id }));
        } else if (cmd === 'work') {
            const want = Number(rest[0]);
            const processed = [];
            const events = [];
            const qe = new QueueEvents(queueName, { connection, lastEventId: '0-0' });
            await qe.waitUntilReady();
            let done;
            const finished = new Promise(r => { done = r; });
            qe.on('completed', ({ jobId }) => {
                events.push(jobId);
                if (events.length >= want && processed.length >= want) done();
            });
            const worker = new Worker(queueName, async job => {
                processed.push({ id: job.id, name: job.name, data: job.data });
                return { ok: true };
            }, { connection, concurrency: 1 });
            await finished;
            await worker.close();
            await qe.close();
            console.log(JSON.stringify({ processed, events,
                                         counts: await queue.getJobCounts() }));
        } else if (cmd === 'addmany') {
            const jobs = await queue.addBulk(JSON.parse(rest[0]));
            console.log(JSON.stringify({ ids: jobs.map(j => j.id) }));
        } else if (cmd === 'watch') {
            const want = Number(rest[0]);
            const completed = {};
            const failed = {};
            const qe = new QueueEvents(queueName, { connection, lastEventId: '0-0' });
            let done;
            const finished = new Promise(r => { done = r; });
            const check = () => {
                if (Object.keys(completed).length + Object.keys(failed).length >= want) done();
            };
            qe.on('completed', ({ jobId, returnvalue }) => { completed[jobId] = returnvalue; check(); });
            qe.on('failed', ({ jobId, failedReason }) => { failed[jobId] = failedReason; check(); });
            qe.on('error', e => { console.error(e); process.exit(4); });
            await qe.waitUntilReady();
            await finished;
            await qe.close();
            console.log(JSON.stringify({ completed, failed, counts: await queue.getJobCounts() }));
        } else if (cmd === 'events') {
            const IORedis = require('ioredis');
            const client = new IORedis(connection);
            const entries = await client.xrange(`bull:${queueName}:events`, '-', '+');
            client.disconnect();
            const out = [];
            for (const [id, fields] of entries) {
                const e = { ms: Number(id.split('-')[0]) };
                for (let i = 0; i + 1 < fields.length; i += 2) e[fields[i]] = fields[i + 1];
                if (!rest[0] || e.jobId === rest[0]) out.push(e);
            }
            console.log(JSON.stringify(out));
        } else if (cmd === 'job') {
            const job = await queue.getJob(rest[0]);
            console.log(JSON.stringify(job ? { ...job.toJSON(), state: await job.getState() } : null));
        } else {
            throw new Error(`unknown command ${cmd}`);
        }
    } finally {
        await queue.close();
    }
}

main().then(() => process.exit(0), e => { console.error(e); process.exit(1); });
