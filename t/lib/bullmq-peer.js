// The real BullMQ (npm bullmq 6.7.0) as a peer of the tests: what a Node
// app's producers, workers and dashboards see of the jobs nginx enqueues.
//
//   node bullmq-peer.js jobs   REDIS_URL Q1,Q2,...      → JSON {queue: [{id,name,data,opts,state}]} (getJobs)
//   node bullmq-peer.js counts REDIS_URL QUEUE          → JSON getJobCounts()
//   node bullmq-peer.js add    REDIS_URL QUEUE NAME DATA → the id of a job a Node Queue added
//   node bullmq-peer.js work   REDIS_URL QUEUE N        → a Worker completes N jobs; JSON
//        {processed:[{id,name,data}], events:[ids QueueEvents saw completed], counts}
//
// Prints one JSON line on stdout; exits non-zero on failure or after 20 s.
'use strict';

const { Queue, Worker, QueueEvents } = require('bullmq');

const [cmd, url, queueName, ...rest] = process.argv.slice(2);
const u = new URL(url);
const connection = {
    host: u.hostname, port: Number(u.port || 6379),
    db: Number((u.pathname || '/0').slice(1) || 0),
    maxRetriesPerRequest: null,
};

setTimeout(() => { console.error('bullmq-peer: timed out'); process.exit(3); }, 20000).unref();

async function jobsOf(name) {
    const queue = new Queue(name, { connection });
    const jobs = await queue.getJobs(['prioritized', 'waiting', 'active', 'delayed',
                                      'completed', 'failed'], 0, -1, true);
    const out = [];
    for (const j of jobs) {
        out.push({ id: j.id, name: j.name, data: j.data, opts: j.opts,
                   state: await j.getState(), timestamp: j.timestamp,
                   priority: j.priority });
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
        } else {
            throw new Error(`unknown command ${cmd}`);
        }
    } finally {
        await queue.close();
    }
}

main().then(() => process.exit(0), e => { console.error(e); process.exit(1); });
