// Ahava ops console: health, Prometheus metrics as live numbers and the
// WebSocket event stream of an admin token.  Plain browser JavaScript, no
// framework, no build step, no external URL; every text that comes from the
// server goes into the page through textContent, never as markup.
'use strict';

(function () {
    const POLL_MS = 2000;             // health and metrics
    const FETCH_TIMEOUT_MS = 1800;
    const RATE_WINDOW_S = 10;         // rates and quantiles over about this long
    const HISTORY_S = 60;
    const MAX_EVENTS = 200;
    const TOKEN_KEY = 'ahava.console.token';
    const METRICS_KEY = 'ahava.console.metrics';

    const $ = (id) => document.getElementById(id);

    // el('td', {className: 'num'}, 'text', childNode, ...)
    function el(tag, props, ...children) {
        const e = document.createElement(tag);
        if (props) {
            for (const [k, v] of Object.entries(props)) {
                if (k === 'dataset') Object.assign(e.dataset, v);
                else if (k === 'attrs') for (const [a, av] of Object.entries(v)) e.setAttribute(a, av);
                else e[k] = v;
            }
        }
        for (const c of children) {
            if (c === null || c === undefined) continue;
            e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
        }
        return e;
    }

    function setText(id, text, state) {
        const e = $(id);
        if (!e) return;
        if (e.textContent !== text) e.textContent = text;
        if (state) e.dataset.state = state;
        else delete e.dataset.state;
    }

    function clockTime(d) {
        const p = (n, w) => String(n).padStart(w || 2, '0');
        return p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds())
            + '.' + p(d.getMilliseconds(), 3);
    }

    async function fetchText(url) {
        const ac = new AbortController();
        const timer = setTimeout(() => ac.abort(), FETCH_TIMEOUT_MS);
        try {
            const res = await fetch(url, {
                cache: 'no-store', credentials: 'same-origin', signal: ac.signal,
                headers: { Accept: 'text/plain, application/json;q=0.9, */*;q=0.1' },
            });
            const text = await res.text();
            return { status: res.status, ok: res.ok, text };
        } finally {
            clearTimeout(timer);
        }
    }

    // Runs fn every POLL_MS, never two at once
    function every(fn) {
        const tick = async () => {
            const started = Date.now();
            try {
                await fn();
            } catch (e) {
                // fn reports its own failures; this keeps the loop alive
            }
            setTimeout(tick, Math.max(200, POLL_MS - (Date.now() - started)));
        };
        tick();
    }

    // ------------------------------------------------------------------
    // Health

    function setPart(id, state, text) {
        const e = $(id);
        e.dataset.state = state;
        const s = e.querySelector('.state');
        if (s.textContent !== text) s.textContent = text;
    }

    function partState(v) {
        if (v === 'ok') return ['ok', 'ok'];
        if (v === undefined || v === null) return ['unknown', '—'];
        return ['down', String(v)];
    }

    let lastHealthOk = null;

    async function pollHealth() {
        const now = new Date();
        let r;
        try {
            r = await fetchText('/health');
        } catch (e) {
            setPart('health-nginx', 'down', 'unreachable');
            setPart('health-overall', 'down', 'unknown');
            setPart('health-postgres', 'unknown', '?');
            setPart('health-redis', 'unknown', '?');
            $('health-checked').textContent = clockTime(now);
            $('health-checked').dateTime = now.toISOString();
            $('health-detail').textContent = '— nginx did not answer ('
                + (e && e.name === 'AbortError' ? 'timeout' : 'connection failed') + ')'
                + (lastHealthOk ? '; last answer at ' + clockTime(lastHealthOk) : '');
            document.title = '[unreachable] Ahava ops console';
            return;
        }
        lastHealthOk = now;
        setPart('health-nginx', 'ok', 'reachable');
        let j = null;
        try {
            j = JSON.parse(r.text);
        } catch (e) {
            j = null;
        }
        if (!j || typeof j !== 'object') {
            setPart('health-overall', 'down', 'HTTP ' + r.status);
            setPart('health-postgres', 'unknown', '?');
            setPart('health-redis', 'unknown', '?');
            $('health-detail').textContent = '— /health did not answer JSON';
        } else {
            const [os, ot] = partState(j.status);
            setPart('health-overall', os, ot);
            const [ps, pt] = partState(j.postgres);
            setPart('health-postgres', ps, pt);
            const [rs, rt] = partState(j.redis);
            setPart('health-redis', rs, rt);
            $('health-detail').textContent = '(HTTP ' + r.status + ')';
        }
        $('health-checked').textContent = clockTime(now);
        $('health-checked').dateTime = now.toISOString();
        const down = $('health-overall').dataset.state !== 'ok';
        document.title = (down ? '[DOWN] ' : '') + 'Ahava ops console';
    }

    // ------------------------------------------------------------------
    // Prometheus text exposition format (version 0.0.4), with the parts of
    // OpenMetrics a scrape may carry (# EOF, a trailing comma in labels).
    // Returns { samples: [{name, labels, value, key}], types, help, errors }.

    const NAME_RE = /[a-zA-Z_:][a-zA-Z0-9_:]*/y;
    const LABEL_RE = /[a-zA-Z_][a-zA-Z0-9_]*/y;

    function parseValue(tok) {
        if (tok === undefined || tok === '') return undefined;
        const t = tok.toLowerCase();
        if (t === 'nan') return NaN;
        if (t === '+inf' || t === 'inf' || t === '+infinity' || t === 'infinity') return Infinity;
        if (t === '-inf' || t === '-infinity') return -Infinity;
        if (!/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/.test(t)) return undefined;
        return Number(tok);
    }

    function seriesKey(name, labels) {
        const ks = Object.keys(labels).sort();
        if (!ks.length) return name;
        return name + '{' + ks.map((k) => k + '="' + escapeLabel(labels[k]) + '"').join(',') + '}';
    }

    function escapeLabel(v) {
        return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
    }

    function parseProm(text) {
        const out = { samples: [], types: Object.create(null), help: Object.create(null), errors: [] };
        const lines = text.split('\n');
        for (let n = 0; n < lines.length; n++) {
            let line = lines[n];
            if (line.endsWith('\r')) line = line.slice(0, -1);
            const body = line.replace(/^[ \t]+/, '');
            if (body === '') continue;
            if (body[0] === '#') {
                const m = /^#[ \t]+(HELP|TYPE)[ \t]+([a-zA-Z_:][a-zA-Z0-9_:]*)(?:[ \t]+(.*))?$/.exec(body);
                if (m && m[1] === 'TYPE') out.types[m[2]] = (m[3] || 'untyped').trim().toLowerCase();
                else if (m) out.help[m[2]] = (m[3] || '').replace(/\\(n|\\)/g, (_, c) => (c === 'n' ? '\n' : '\\'));
                continue;   // any other comment, # EOF included
            }
            try {
                out.samples.push(parseSample(body));
            } catch (e) {
                if (out.errors.length < 20) out.errors.push('line ' + (n + 1) + ': ' + e.message);
            }
        }
        return out;
    }

    function parseSample(s) {
        let i = 0;
        const ws = () => { while (i < s.length && (s[i] === ' ' || s[i] === '\t')) i++; };
        NAME_RE.lastIndex = 0;
        const nm = NAME_RE.exec(s);
        if (!nm) throw new Error('no metric name');
        const name = nm[0];
        i = NAME_RE.lastIndex;
        const labels = Object.create(null);
        ws();
        if (s[i] === '{') {
            i++;
            for (;;) {
                ws();
                if (s[i] === '}') { i++; break; }
                LABEL_RE.lastIndex = i;
                const lm = LABEL_RE.exec(s);
                if (!lm) throw new Error('bad label name at column ' + (i + 1));
                i = LABEL_RE.lastIndex;
                ws();
                if (s[i] !== '=') throw new Error("'=' expected at column " + (i + 1));
                i++;
                ws();
                if (s[i] !== '"') throw new Error('\'"\' expected at column ' + (i + 1));
                i++;
                let v = '';
                for (;;) {
                    if (i >= s.length) throw new Error('unterminated label value');
                    const c = s[i++];
                    if (c === '"') break;
                    if (c === '\\') {
                        const d = s[i++];
                        if (d === 'n') v += '\n';
                        else if (d === '\\' || d === '"') v += d;
                        else if (d === undefined) throw new Error('unterminated label value');
                        else v += '\\' + d;
                    } else {
                        v += c;
                    }
                }
                labels[lm[0]] = v;
                ws();
                if (s[i] === ',') { i++; continue; }
                if (s[i] === '}') { i++; break; }
                throw new Error("',' or '}' expected at column " + (i + 1));
            }
        }
        const rest = s.slice(i).trim().split(/[ \t]+/);
        const value = parseValue(rest[0]);
        if (value === undefined) throw new Error('bad value ' + JSON.stringify(rest[0] || ''));
        if (rest.length > 2) throw new Error('unexpected text after the timestamp');
        return { name, labels, value, key: seriesKey(name, labels) };
    }

    // ------------------------------------------------------------------
    // Metrics: scrapes kept for a minute; rates over the last RATE_WINDOW_S

    let metricsUrl = '/metrics';
    let scrapes = [];     // [{t (s), map: Map(key -> value)}]
    let current = null;   // the last parsed scrape
    let lastDt = 0;       // seconds between it and its baseline

    function familyType(name, types) {
        if (types[name]) return types[name];
        for (const suf of ['_bucket', '_count', '_sum', '_total', '_created']) {
            if (name.endsWith(suf)) {
                const base = name.slice(0, -suf.length);
                if (types[base]) return types[base];
            }
        }
        return name.endsWith('_total') ? 'counter' : '';
    }

    function isCounterLike(name, types) {
        const t = familyType(name, types);
        if (t === 'counter') return true;
        if (t === 'histogram' || t === 'summary') return /_(bucket|count|sum)$/.test(name);
        return false;
    }

    // The scrape to compute rates against: the oldest within the window,
    // at least the previous one
    function baseline() {
        if (scrapes.length < 2) return null;
        const last = scrapes[scrapes.length - 1];
        let base = scrapes[scrapes.length - 2];
        for (let k = scrapes.length - 2; k >= 0; k--) {
            if (last.t - scrapes[k].t > RATE_WINDOW_S + 0.5) break;
            base = scrapes[k];
        }
        return base;
    }

    // The increase of a counter since the baseline (a reset counts from 0)
    function increase(key, cur, base) {
        if (!Number.isFinite(cur)) return 0;
        const prev = base.map.get(key);
        if (prev === undefined || !Number.isFinite(prev)) return cur;
        return cur >= prev ? cur - prev : cur;
    }

    function series(name) {
        return current ? current.samples.filter((s) => s.name === name) : [];
    }

    function sumOf(name) {
        const ss = series(name);
        if (!ss.length) return null;
        return { sum: ss.reduce((a, s) => a + (Number.isFinite(s.value) ? s.value : 0), 0), n: ss.length };
    }

    function fmtNum(v) {
        if (v === null || v === undefined) return '—';
        if (Number.isNaN(v)) return 'NaN';
        if (v === Infinity) return '+Inf';
        if (v === -Infinity) return '-Inf';
        if (Number.isInteger(v)) return String(v);
        if (Math.abs(v) >= 100) return v.toFixed(1);
        return String(Number(v.toPrecision(4)));
    }

    function fmtRate(v) {
        if (v === null || v === undefined || !Number.isFinite(v)) return '—';
        return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
    }

    function fmtSeconds(v) {
        if (v === null || v === undefined || Number.isNaN(v)) return '—';
        if (!Number.isFinite(v)) return v > 0 ? '> max bucket' : '—';
        if (v < 1) return (v * 1000).toFixed(v < 0.01 ? 2 : 1) + ' ms';
        return v.toFixed(2) + ' s';
    }

    function fmtPct(part, all) {
        if (!all) return '0%';
        const p = (100 * part) / all;
        return (p < 10 ? p.toFixed(1) : p.toFixed(0)) + '%';
    }

    // Prometheus' histogram_quantile over [{le, count}] (cumulative counts)
    function quantile(q, buckets) {
        if (!buckets.length) return NaN;
        buckets.sort((a, b) => a.le - b.le);
        if (buckets[buckets.length - 1].le !== Infinity) return NaN;
        for (let k = 1; k < buckets.length; k++) {           // a scrape may race the buckets
            if (buckets[k].count < buckets[k - 1].count) buckets[k].count = buckets[k - 1].count;
        }
        const total = buckets[buckets.length - 1].count;
        if (!(total > 0)) return NaN;
        let rank = q * total;
        let b = buckets.findIndex((x) => x.count >= rank);
        if (b === buckets.length - 1) return buckets.length > 1 ? buckets[b - 1].le : NaN;
        if (b === 0 && buckets[0].le <= 0) return buckets[0].le;
        const start = b === 0 ? 0 : buckets[b - 1].le;
        const before = b === 0 ? 0 : buckets[b - 1].count;
        const inBucket = buckets[b].count - before;
        rank -= before;
        return inBucket > 0 ? start + (buckets[b].le - start) * (rank / inBucket) : buckets[b].le;
    }

    function renderHttp(base, dt) {
        const routes = new Map();
        const route = (r) => {
            if (!routes.has(r)) routes.set(r, { rate: 0, c4: 0, c5: 0, total: 0, buckets: new Map() });
            return routes.get(r);
        };
        let all = 0, c4 = 0, c5 = 0, total = 0, seen = false;
        for (const s of series('ahava_http_requests_total')) {
            seen = true;
            const r = route(s.labels.route || '(none)');
            const status = s.labels.status || s.labels.code || '';
            r.total += Number.isFinite(s.value) ? s.value : 0;
            total += Number.isFinite(s.value) ? s.value : 0;
            if (!base) continue;
            const inc = increase(s.key, s.value, base);
            r.rate += inc;
            all += inc;
            if (status[0] === '4') { r.c4 += inc; c4 += inc; }
            if (status[0] === '5') { r.c5 += inc; c5 += inc; }
        }
        for (const s of series('ahava_http_request_duration_seconds_bucket')) {
            const le = parseValue(s.labels.le);
            if (le === undefined || Number.isNaN(le)) continue;
            const r = route(s.labels.route || '(none)');
            const v = base ? increase(s.key, s.value, base) : 0;
            r.buckets.set(le, (r.buckets.get(le) || 0) + v);
        }

        setText('m-req-total', seen ? fmtNum(total) : '—');
        setText('m-req-rate', seen && base ? fmtRate(all / dt) : '—');
        setText('m-4xx-rate', seen && base ? fmtRate(c4 / dt) : '—', seen && base && c4 > 0 ? 'warn' : null);
        setText('m-5xx-rate', seen && base ? fmtRate(c5 / dt) : '—', seen && base && c5 > 0 ? 'down' : null);
        setText('m-err-ratio', seen && base ? fmtPct(c4, all) + ', ' + fmtPct(c5, all) : '—',
                seen && base && c5 > 0 ? 'down' : null);

        const tbody = $('routes').tBodies[0];
        const rows = [];
        const showIdle = $('show-idle').checked;
        let idle = 0;
        for (const [name, r] of [...routes.entries()].sort((a, b) => a[0].localeCompare(b[0]))) {
            if (r.total === 0 && !showIdle) { idle++; continue; }
            const buckets = [...r.buckets.entries()].map(([le, count]) => ({ le, count }));
            const p50 = base ? quantile(0.5, buckets.map((x) => ({ ...x }))) : NaN;
            const p99 = base ? quantile(0.99, buckets.map((x) => ({ ...x }))) : NaN;
            rows.push(el('tr', { dataset: { route: name } },
                el('th', { scope: 'row' }, name),
                el('td', { className: 'num' }, base ? fmtRate(r.rate / dt) : '—'),
                el('td', { className: 'num', dataset: r.c4 > 0 ? { state: 'warn' } : {} },
                   base ? fmtRate(r.c4 / dt) : '—'),
                el('td', { className: 'num', dataset: r.c5 > 0 ? { state: 'down' } : {} },
                   base ? fmtRate(r.c5 / dt) : '—'),
                el('td', { className: 'num' }, fmtSeconds(p50)),
                el('td', { className: 'num' }, fmtSeconds(p99)),
                el('td', { className: 'num' }, fmtNum(r.total))));
        }
        if (!rows.length) {
            rows.push(el('tr', { className: 'empty' },
                el('td', { colSpan: 7 }, seen ? 'no requests yet' : 'no ahava_http_requests_total series')));
        }
        tbody.replaceChildren(...rows);
        $('idle-count').textContent = idle ? '(' + idle + ' hidden)' : '';
    }

    // A counter's total, with its increase over the window when it moved
    function counterText(name, base) {
        const s = sumOf(name);
        if (!s) return null;
        let text = fmtNum(s.sum);
        if (base) {
            let inc = 0;
            for (const x of series(name)) inc += increase(x.key, x.value, base);
            if (inc > 0) text += ' (+' + fmtNum(inc) + ')';
        }
        return text;
    }

    function gauge(id, name, badWhen) {
        const s = sumOf(name);
        if (!s) { setText(id, '—'); return; }
        setText(id, fmtNum(s.sum), badWhen && badWhen(s.sum) ? 'warn' : null);
    }

    function counter(id, name, base, bad) {
        const t = counterText(name, base);
        setText(id, t === null ? '—' : t, bad && t && t.includes('(+') ? 'warn' : null);
    }

    function renderCards(base, dt) {
        gauge('m-workers', 'ahava_nginx_workers');

        gauge('m-pg-conn', 'ahava_pg_connections');
        gauge('m-pg-busy', 'ahava_pg_connections_busy');
        gauge('m-pg-waiters', 'ahava_pg_waiters', (v) => v > 0);
        counter('m-pg-rejected', 'ahava_pg_rejected_total', base, true);
        counter('m-pg-reconnects', 'ahava_pg_reconnects_total', base, true);

        // the workers connected, out of the workers counting (one series each)
        const rc = sumOf('ahava_redis_connected');
        const nw = sumOf('ahava_nginx_workers');
        const of = nw ? nw.sum : (rc ? rc.n : 0);
        if (!rc) setText('m-redis-connected', '—');
        else if (of > 1) setText('m-redis-connected', fmtNum(rc.sum) + ' of ' + fmtNum(of), rc.sum >= of ? 'ok' : 'down');
        else setText('m-redis-connected', rc.sum > 0 ? 'yes' : 'no', rc.sum > 0 ? 'ok' : 'down');
        counter('m-redis-reconnects', 'ahava_redis_reconnects_total', base, true);

        counter('m-ev-published', 'ahava_events_published_total', base);
        const pub = series('ahava_events_published_total');
        if (pub.length && base) {
            let inc = 0;
            for (const x of pub) inc += increase(x.key, x.value, base);
            setText('m-ev-rate', fmtRate(inc / dt));
        } else {
            setText('m-ev-rate', '—');
        }
        counter('m-ev-late', 'ahava_events_relayed_late_total', base, true);
        gauge('m-outbox', 'ahava_outbox_depth', (v) => v > 0);

        gauge('m-ws-conn', 'ahava_ws_connections');
        gauge('m-ws-users', 'ahava_ws_users');

        counter('m-up-accepted', 'ahava_uploads_accepted_total', base);
        counter('m-up-rejected', 'ahava_uploads_rejected_total', base);
        const byReason = new Map();
        for (const s of series('ahava_uploads_rejected_total')) {
            const r = s.labels.reason || '(none)';
            byReason.set(r, (byReason.get(r) || 0) + (Number.isFinite(s.value) ? s.value : 0));
        }
        $('m-up-reasons').replaceChildren(...[...byReason.entries()].sort()
            .map(([r, v]) => el('li', { dataset: { reason: r } }, r + ': ' + fmtNum(v))));
    }

    const allRows = new Map();   // series key -> {tr, cells}

    function renderAll(base, dt) {
        const tbody = $('all-table').tBodies[0];
        const seen = new Set();
        const samples = current.samples.filter((s) => s.name.startsWith('ahava_'))
            .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
        let prev = null;
        for (const s of samples) {
            if (seen.has(s.key)) continue;   // a duplicate line: the first wins
            seen.add(s.key);
            let row = allRows.get(s.key);
            if (!row) {
                const cells = [el('td', { className: 'series' }, s.key), el('td'),
                               el('td', { className: 'num' }), el('td', { className: 'num' })];
                row = { tr: el('tr', { dataset: { key: s.key } }, ...cells), cells };
                allRows.set(s.key, row);
            }
            const type = familyType(s.name, current.types);
            const rate = base && isCounterLike(s.name, current.types)
                ? fmtRate(increase(s.key, s.value, base) / dt) : '';
            const texts = [s.key, type, fmtNum(s.value), rate];
            texts.forEach((t, k) => { if (row.cells[k].textContent !== t) row.cells[k].textContent = t; });
            const help = current.help[s.name] || current.help[s.name.replace(/_(bucket|count|sum)$/, '')];
            if (help && row.tr.title !== help) row.tr.title = help;
            // keep the DOM in the sorted order without rebuilding it
            const want = prev ? prev.nextSibling : tbody.firstChild;
            if (want !== row.tr) tbody.insertBefore(row.tr, want);
            prev = row.tr;
        }
        for (const [k, row] of allRows) {
            if (!seen.has(k)) { row.tr.remove(); allRows.delete(k); }
        }
        $('all-count').textContent = String(seen.size);
        applyFilter();
    }

    function applyFilter() {
        const f = $('all-filter').value.trim().toLowerCase();
        for (const [k, row] of allRows) row.tr.hidden = f !== '' && !k.toLowerCase().includes(f);
    }

    function clearMetrics(why) {
        scrapes = [];
        current = null;
        for (const id of ['m-req-rate', 'm-4xx-rate', 'm-5xx-rate', 'm-err-ratio', 'm-req-total',
                          'm-workers', 'm-pg-conn', 'm-pg-busy', 'm-pg-waiters', 'm-pg-rejected',
                          'm-pg-reconnects', 'm-redis-connected', 'm-redis-reconnects',
                          'm-ev-published', 'm-ev-rate', 'm-ev-late', 'm-outbox', 'm-ws-conn',
                          'm-ws-users', 'm-up-accepted', 'm-up-rejected']) {
            setText(id, '—');
        }
        $('m-up-reasons').replaceChildren();
        $('routes').tBodies[0].replaceChildren(el('tr', { className: 'empty' },
            el('td', { colSpan: 7 }, why || 'no data yet')));
        for (const row of allRows.values()) row.tr.remove();
        allRows.clear();
        $('all-count').textContent = '0';
    }

    let metricsGen = 0;

    async function pollMetrics() {
        const gen = metricsGen;
        const url = metricsUrl;
        const now = new Date();
        let r;
        try {
            r = await fetchText(url);
        } catch (e) {
            if (gen !== metricsGen) return;
            $('metrics-detail').textContent = '— ' + url + ' did not answer';
            $('metrics-detail').dataset.state = 'down';
            $('metrics-section').dataset.stale = 'true';
            return;
        }
        if (gen !== metricsGen) return;     // the URL changed meanwhile
        $('metrics-checked').textContent = clockTime(now);
        $('metrics-checked').dateTime = now.toISOString();
        if (!r.ok) {
            $('metrics-detail').textContent = '— HTTP ' + r.status + ' from ' + url;
            $('metrics-detail').dataset.state = 'down';
            $('metrics-section').dataset.stale = 'true';
            return;
        }
        delete $('metrics-section').dataset.stale;
        const parsed = parseProm(r.text);
        const map = new Map();
        for (const s of parsed.samples) if (!map.has(s.key)) map.set(s.key, s.value);
        const t = performance.now() / 1000;
        scrapes.push({ t, map });
        while (scrapes.length > 2 && t - scrapes[0].t > HISTORY_S) scrapes.shift();
        current = parsed;
        const base = baseline();
        const dt = base ? t - base.t : 0;
        lastDt = dt;
        $('m-window').textContent = base ? dt.toFixed(1) + ' s' : '— (needs two scrapes)';
        renderHttp(base, dt);
        renderCards(base, dt);
        renderAll(base, dt);
        $('metrics-detail').textContent = '(' + parsed.samples.length + ' samples'
            + (parsed.errors.length ? '; unparsable: ' + parsed.errors.join('; ') : '') + ')';
        if (parsed.errors.length) $('metrics-detail').dataset.state = 'warn';
        else delete $('metrics-detail').dataset.state;
    }

    function setMetricsUrl(u, push) {
        u = (u || '').trim() || '/metrics';
        if (u === metricsUrl) return;
        metricsUrl = u;
        metricsGen++;
        clearMetrics('switching to ' + u);
        $('metrics-url').value = u;
        try { sessionStorage.setItem(METRICS_KEY, u); } catch (e) { /* storage off */ }
        if (push) {
            const q = new URLSearchParams(location.search);
            if (u === '/metrics') q.delete('metrics'); else q.set('metrics', u);
            const qs = q.toString();
            replaceUrl(location.pathname + (qs ? '?' + qs : '') + location.hash);
        }
    }

    function replaceUrl(url) {
        try { window.history.replaceState(null, '', url); } catch (e) { /* file: etc. */ }
    }

    // ------------------------------------------------------------------
    // Live events over /ws (SPEC §8): the token as the subprotocol carrier

    let ws = null;
    let wsWanted = false;
    let retries = 0;
    let retryTimer = null;
    let countdown = null;
    let received = 0;

    function setWsState(state, text) {
        const e = $('ws-state');
        e.dataset.state = state;
        e.textContent = text;
    }

    let memToken = '';      // when sessionStorage is unavailable

    function getToken() {
        try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch (e) { return memToken; }
    }
    function putToken(t) {
        memToken = t;
        try {
            if (t) sessionStorage.setItem(TOKEN_KEY, t);
            else sessionStorage.removeItem(TOKEN_KEY);
        } catch (e) { /* storage off: memory only */ }
    }

    // #token=... (tests, bookmarks): kept in sessionStorage, then dropped
    // from the address bar so it does not linger in the history
    function tokenFromFragment() {
        if (!location.hash || location.hash.length < 2) return false;
        const h = new URLSearchParams(location.hash.slice(1));
        const t = h.get('token');
        if (!t) return false;
        putToken(t.trim());
        h.delete('token');
        const rest = h.toString();
        replaceUrl(location.pathname + location.search + (rest ? '#' + rest : ''));
        return true;
    }

    function wsUrl() {
        return (location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host + '/ws';
    }

    function clearRetry() {
        clearTimeout(retryTimer);
        clearInterval(countdown);
        retryTimer = countdown = null;
    }

    function connect() {
        clearRetry();
        const token = getToken();
        if (!token) {
            wsWanted = false;
            setWsState('idle', 'no token: paste an admin JWT above');
            return;
        }
        wsWanted = true;
        if (ws) {
            const old = ws;
            ws = null;
            old.close(1000);
        }
        let sock;
        try {
            sock = new WebSocket(wsUrl(), ['bearer', token]);
        } catch (e) {
            wsWanted = false;
            setWsState('down', 'cannot open the socket: ' + e.message
                + ' (is that a JWT? it must be a single token without spaces)');
            return;
        }
        ws = sock;
        let openedAt = 0;
        setWsState('connecting', 'connecting to ' + wsUrl() + ' …');
        sock.onopen = () => {
            if (ws !== sock) return;
            openedAt = Date.now();
            setWsState('open', 'open' + (sock.protocol ? ' (subprotocol ' + sock.protocol + ')' : ''));
        };
        sock.onmessage = (ev) => {
            if (ws !== sock) return;
            addEvent(ev.data);
        };
        sock.onerror = () => { /* onclose follows with the details */ };
        sock.onclose = (ev) => {
            if (ws !== sock) return;
            ws = null;
            if (openedAt && Date.now() - openedAt > 30000) retries = 0;
            let why = openedAt
                ? 'closed (code ' + ev.code + (ev.reason ? ', ' + ev.reason : '') + ')'
                : 'could not connect (code ' + ev.code + '; a 401 here means a bad or expired token)';
            if (!wsWanted) {
                setWsState('idle', why);
                return;
            }
            const delay = Math.min(30, 2 ** Math.min(retries, 5)) * (0.8 + 0.4 * Math.random());
            retries++;
            const until = Date.now() + delay * 1000;
            const show = () => setWsState('down', why + ' — reconnecting in '
                + Math.max(0, Math.ceil((until - Date.now()) / 1000)) + ' s');
            show();
            countdown = setInterval(show, 1000);
            retryTimer = setTimeout(connect, delay * 1000);
        };
    }

    function disconnect(text) {
        wsWanted = false;
        clearRetry();
        retries = 0;
        if (ws) {
            const old = ws;
            ws = null;
            old.close(1000);
        }
        setWsState('idle', text || 'disconnected');
    }

    const SUMMARY_KEYS = ['content', 'status', 'visitId', 'senderId', 'recipientId', 'userId',
                          'nurseId', 'doctorId', 'isTyping', 'lat', 'lng', 'messageIds', 'updated',
                          'reason', 'message', 'code', 'error', 'id'];

    function compact(v) {
        if (v === null) return 'null';
        if (Array.isArray(v)) {
            const s = v.map((x) => (typeof x === 'object' && x !== null ? '{…}' : String(x))).join(', ');
            return '[' + (s.length > 80 ? v.length + ' items' : s) + ']';
        }
        if (typeof v === 'object') return '{…}';
        const s = String(v);
        return s.length > 120 ? s.slice(0, 119) + '…' : s;
    }

    function summarize(data) {
        if (data === undefined) return '';
        if (data === null || typeof data !== 'object') return compact(data);
        const keys = SUMMARY_KEYS.filter((k) => k in data);
        for (const k of Object.keys(data)) {
            if (keys.length >= 8) break;
            if (!keys.includes(k) && (typeof data[k] !== 'object' || data[k] === null)) keys.push(k);
        }
        const s = keys.map((k) => k + ': ' + compact(data[k])).join(' · ');
        return s.length > 400 ? s.slice(0, 399) + '…' : s;
    }

    function addEvent(raw) {
        received++;
        const now = new Date();
        let frame = null;
        try { frame = JSON.parse(raw); } catch (e) { frame = null; }
        const isFrame = frame && typeof frame === 'object' && !Array.isArray(frame);
        const type = isFrame && typeof frame.type === 'string' ? frame.type : '(not a JSON frame)';
        let when = now;
        if (isFrame && typeof frame.timestamp === 'string') {
            const d = new Date(frame.timestamp);
            if (!Number.isNaN(d.getTime())) when = d;
        }
        const pretty = isFrame ? JSON.stringify(frame, null, 2) : String(raw);
        const li = el('li', { dataset: { type, kind: /ERROR/.test(type) ? 'error' : 'event' } },
            el('div', { className: 'ev-head' },
                el('time', { dateTime: when.toISOString(), title: when.toISOString() }, clockTime(when)),
                el('span', { className: 'ev-type' }, type),
                el('span', { className: 'ev-summary' }, isFrame ? summarize(frame.data) : compact(raw))),
            el('details', null, el('summary', null, 'raw JSON'), el('pre', null, pretty)));
        const list = $('events');
        list.prepend(li);
        while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
        $('ev-count').textContent = String(received);
    }

    // ------------------------------------------------------------------

    function start() {
        const q = new URLSearchParams(location.search);
        let m = q.get('metrics');
        if (!m) { try { m = sessionStorage.getItem(METRICS_KEY); } catch (e) { m = null; } }
        metricsUrl = '';
        setMetricsUrl(m || '/metrics', false);

        $('metrics-form').addEventListener('submit', (ev) => {
            ev.preventDefault();
            setMetricsUrl($('metrics-url').value, true);
        });
        $('all-filter').addEventListener('input', applyFilter);
        $('show-idle').addEventListener('change', () => {
            if (current) renderHttp(baseline(), lastDt);
        });

        tokenFromFragment();
        $('token').value = getToken();
        $('token-form').addEventListener('submit', (ev) => {
            ev.preventDefault();
            putToken($('token').value.trim());
            retries = 0;
            connect();
        });
        $('disconnect').addEventListener('click', () => disconnect());
        $('forget').addEventListener('click', () => {
            putToken('');
            $('token').value = '';
            disconnect('token forgotten');
        });
        $('clear-events').addEventListener('click', () => {
            $('events').replaceChildren();
            received = 0;
            $('ev-count').textContent = '0';
        });
        window.addEventListener('hashchange', () => {
            if (tokenFromFragment()) {
                $('token').value = getToken();
                retries = 0;
                connect();
            }
        });

        every(pollHealth);
        every(pollMetrics);
        if (getToken()) connect();
        else setWsState('idle', 'no token: paste an admin JWT above');
    }

    // for the console's own test and for debugging in the browser's devtools
    window.ahavaConsole = { parseProm, quantile };

    if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
    else start();
}());
