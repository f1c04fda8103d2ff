# The ops console (issue 13): console/ served by nginx as static files, in
# headless Chromium driven over the DevTools protocol (t/lib/cdp.js).  The
# page must show the health (PostgreSQL and Redis "ok"), numbers scraped
# from `ahava_metrics` (requests, its own WebSocket among the open sockets),
# and, on the admin token taken from the URL fragment, a NEW_MESSAGE that
# the admin posts over HTTP during the test (SPEC §6: the sender's other
# sessions get it).  Its Prometheus parser is checked on awkward input, the
# browser must have seen no error, and a screenshot of the page is kept in
# t/servroot-810-console/console.png.  Then, with the page's fetch of /health
# replaced, what it shows for a 503 and for nginx not answering.  Skipped
# when no Chromium is installed.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Ahava::Test::Util qw(run_capture repo_root);
use Ahava::Test::WS qw(ws_config);
use Ahava::Messages qw(send_message data_of);
use File::Basename qw(dirname);
use File::Temp ();
use IO::Select;
use JSON::PP ();
use POSIX qw(WNOHANG);

my ($chromium) = grep { -x } qw(/usr/bin/chromium /usr/bin/chromium-browser);
plan skip_all => 'no Chromium (Debian package chromium)' unless $chromium;
plan skip_all => 't/node_modules/ws is missing (npm ci in t/)'
    unless -e repo_root() . '/t/node_modules/ws/package.json';

$SIG{PIPE} = 'IGNORE';
setup();

# conf.d/ahava.conf's locations; mime.types is http-level in Debian's
# nginx.conf, the harness has none, hence the types here
my $CONF = ws_config(server => <<'_EOC_');
    location = /metrics { ahava_metrics; }
    location = /console { return 301 /console/; }
    location /console/ {
        alias  $TEST_NGINX_REPO/console/;
        types  { text/html html; text/css css; text/javascript js; }
    }
_EOC_

my $N = start_nginx($CONF, workers => 1);
ok(poll_until(10, sub { ((response(GET => '/health')->json || {})->{redis} // '') eq 'ok' }),
   'nginx is connected to Redis');

# the files as nginx serves them
my $r = response(GET => '/console/');
is($r->status, 200, 'GET /console/ is 200');
like($r->header('content-type') // '', qr{^text/html}, '... text/html');
unlike($r->raw, qr{(?:src|href)\s*=\s*["']?(?:https?:)?//}i, '... no external URL in the page');
is(response(GET => '/console')->status, 301, 'GET /console redirects to /console/');
for my $f (qw(console.js console.css)) {
    is(response(GET => "/console/$f")->status, 200, "GET /console/$f is 200");
}
api_ok(response(GET => '/api/visits', as => 'admin'), 'an API request to count');
$r = response(GET => '/metrics');
is($r->status, 200, 'GET /metrics is 200') or diag($r->dump);

# ---------------------------------------------------------------------------
# Chromium

my $shot = dirname($N->servroot) . '/console.png';
unlink $shot;
my $profile = File::Temp::tempdir('ahava-chromium-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $B = CDP->start(chromium => $chromium, profile => $profile,
                   log => $N->servroot . '/logs/chromium.log');
ok($B, "Chromium is driven over DevTools ($B->{browser})");

# the token as ops make one: bin/ahava-token (the package's ahava-token)
my ($trc, $secret) = run_capture([repo_root() . '/bin/ahava-token', $ID{admin}, '600'],
                                 env => { JWT_SECRET => env_value('JWT_SECRET') });
chomp $secret;
is($trc, 0, 'bin/ahava-token made the admin a token');
is(response(GET => '/api/visits?limit=1', token => $secret)->status, 200, '... which the module accepts');
$B->call(cmd => 'open', url => 'http://127.0.0.1:' . $N->port . "/console/#token=$secret");
ok(1, 'the console loaded');

my $st = $B->js(q{({
    hash: location.hash, search: location.search,
    session: sessionStorage.getItem('ahava.console.token'),
    local: localStorage.length,
})});
is($st->{hash}, '', 'the token left the address bar (fragment dropped)');
is($st->{search}, '', '... and never was in the query string');
is($st->{session}, $secret, '... it is kept in sessionStorage');
is($st->{local}, 0, '... and nothing in localStorage');

my $HEALTH = q{(() => {
    const s = (id) => document.getElementById(id).dataset.state + ':'
                      + document.getElementById(id).querySelector('.state').textContent;
    return [s('health-overall'), s('health-postgres'), s('health-redis'), s('health-nginx'),
            document.getElementById('health-checked').textContent].join(' ');
})()};
my $health;
ok(poll_until(30, sub { ($health = $B->js($HEALTH)) =~ /^ok:ok ok:ok ok:ok ok:reachable \d\d:\d\d/ }),
   'the page shows the health: overall, PostgreSQL, Redis ok, with the time of the check')
    or diag($health);

my $WS_STATE = q{document.getElementById('ws-state').dataset.state + ' '
                 + document.getElementById('ws-state').textContent};
my $ws;
ok(poll_until(30, sub { ($ws = $B->js($WS_STATE)) =~ /^open open \(subprotocol bearer\)/ }),
   "its socket is open, subprotocol 'bearer'") or diag($ws);

my $METRICS = q{(() => {
    const t = (id) => document.getElementById(id).textContent;
    return { rate: t('m-req-rate'), total: t('m-req-total'), ws: t('m-ws-conn'),
             users: t('m-ws-users'), pg: t('m-pg-conn'), redis: t('m-redis-connected'),
             all: Number(t('all-count')), window: t('m-window'),
             routes: document.querySelectorAll('#routes tbody tr[data-route]').length,
             names: [...document.querySelectorAll('#all-table tbody tr')].map((tr) => tr.dataset.key) };
})()};
my $m;
ok(poll_until(30, sub {
        $m = $B->js($METRICS);
        $m->{rate} =~ /^\d+(?:\.\d+)?$/ && $m->{total} =~ /^\d+$/ && $m->{total} > 0
            && $m->{ws} =~ /^\d+$/ && $m->{ws} >= 1 && $m->{users} =~ /^\d+$/ && $m->{users} >= 1
    }), 'the page shows live numbers from /metrics: requests/s, requests, >= 1 socket and user')
    or diag(explain($m));
cmp_ok($m->{all}, '>', 0, "... and lists the ahava_* series ($m->{all})");
ok((grep { /^ahava_http_requests_total\{/ } @{ $m->{names} }), '... ahava_http_requests_total among them');
ok($m->{routes} >= 1, "... with a row per route ($m->{routes})");
like($m->{redis}, qr/^(?:yes|\d+ of \d+)$/, "... Redis connected ($m->{redis})");

# its Prometheus text parser on awkward input
my $P = $B->js(<<'_JS_');
(() => {
    const text = [
        '# HELP x_total A \\\\ help\\nline',
        '# TYPE x_total counter',
        '# a comment',
        'x_total{path="/a\\"b\\\\c\\nd",code="200",} 3 1700000000000',
        '  x_total { path = "sp ace" } 4',
        'y NaN', 'z +Inf', 'w -Inf', 'v 1.5e3', '# EOF',
        'bad{x="1} 2', 'nolabelvalue{x=} 1', 'novalue',
        'h_bucket{le="0.1"} 5', 'h_bucket{le="0.5"} 9', 'h_bucket{le="+Inf"} 10',
    ].join('\n');
    const p = window.ahavaConsole.parseProm(text);
    const q = window.ahavaConsole.quantile;
    const b = p.samples.filter((s) => s.name === 'h_bucket')
        .map((s) => ({ le: s.labels.le === '+Inf' ? Infinity : Number(s.labels.le), count: s.value }));
    return {
        n: p.samples.length, errors: p.errors.length,
        type: p.types.x_total, help: p.help.x_total,
        path: p.samples[0].labels.path, code: p.samples[0].labels.code, x0: p.samples[0].value,
        sp: p.samples[1].labels.path, x1: p.samples[1].value,
        y: String(p.samples[2].value), z: String(p.samples[3].value),
        w: String(p.samples[4].value), v: p.samples[5].value,
        p50: q(0.5, b.map((x) => ({ ...x }))), p95: q(0.95, b.map((x) => ({ ...x }))),
        p99: q(0.99, b.map((x) => ({ ...x }))),
    };
})()
_JS_
is_deeply($P, {
    n => 9, errors => 3, type => 'counter', help => "A \\ help\nline",
    path => "/a\"b\\c\nd", code => '200', x0 => 3, sp => 'sp ace', x1 => 4,
    y => 'NaN', z => 'Infinity', w => '-Infinity', v => 1500,
    p50 => 0.1, p95 => 0.5, p99 => 0.5,
}, "the console's parser: comments, escaped label values, NaN/±Inf, bad lines skipped; quantiles")
    or diag(explain($P));

# ---------------------------------------------------------------------------
# an event posted during the test reaches the page

my $content = "console check $$ " . time;
$r = send_message('admin', $ID{visit1}, 'patient1', $content);
is($r->status, 201, 'the admin posts a message to patient1 over HTTP') or diag($r->dump);
my $mid = (data_of($r) || {})->{id} // '';

my $EVENTS = q{[...document.querySelectorAll('#events > li')].map((li) => ({
    type: li.dataset.type, text: li.querySelector('.ev-summary').textContent,
    raw: li.querySelector('pre').textContent, time: li.querySelector('time').textContent }))};
my $ev;
ok(poll_until(20, sub {
        $ev = $B->js($EVENTS);
        grep { $_->{type} eq 'NEW_MESSAGE' && index($_->{text}, $content) >= 0 } @$ev
    }), 'the page lists the NEW_MESSAGE with its content') or diag(explain($ev));
my ($e) = grep { $_->{type} eq 'NEW_MESSAGE' && index($_->{text}, $content) >= 0 } @$ev;
if ($e) {
    my $raw = eval { JSON::PP->new->decode($e->{raw}) } || {};
    is($raw->{data}{id}, $mid, '... its raw JSON is the frame, the message id in it');
    like($e->{time}, qr/^\d\d:\d\d:\d\d\.\d{3}$/, '... with its time');
}
is($B->js(q{document.getElementById('ev-count').textContent}), scalar(@$ev), '... the count matches');

my $ss = $B->call(cmd => 'screenshot', path => $shot);
ok(-s $shot, "a screenshot: $shot ($ss->{bytes} bytes)");
open my $fh, '<:raw', $shot or die "$shot: $!";
read $fh, my $magic, 8;
close $fh;
is($magic, "\x89PNG\r\n\x1a\n", '... a PNG');
cmp_ok(-s $shot, '>', 20_000, '... of a page with something on it');

my $problems = $B->call(cmd => 'problems')->{value};
is_deeply($problems, [], 'no uncaught exception or console error in the browser')
    or diag(explain($problems));

# a metrics URL that answers 404: the page says so and keeps polling
$B->js(q{(() => { document.getElementById('metrics-url').value = '/nope';
                  document.getElementById('metrics-form').requestSubmit(); return 1; })()});
my $md;
ok(poll_until(10, sub { ($md = $B->js(q{document.getElementById('metrics-detail').textContent}))
                        =~ /HTTP 404 from \/nope/ }),
   "a metrics URL that fails shows its HTTP status") or diag($md);
is($B->js(q{location.search}), '?metrics=%2Fnope', '... and is kept as ?metrics=');
is($B->js(q{document.getElementById('m-req-total').textContent}), "\x{2014}", '... the numbers are cleared to a dash');

# what the page shows when /health answers 503, then when nginx does not
# answer: the page's fetch of /health is replaced (stopping Redis or nginx
# here would cost seconds and the error-log checks)
$B->js(q{(() => {
    const real = window.fetch;
    window.__health = (u, o) => new Response(
        '{"status":"error","postgres":"ok","redis":"down"}',
        { status: 503, headers: { 'Content-Type': 'application/json' } });
    window.fetch = (u, o) => String(u).endsWith('/health')
        ? Promise.resolve().then(() => window.__health(u, o)) : real(u, o);
    return 1;
})()});
ok(poll_until(10, sub { ($health = $B->js($HEALTH)) =~ /^down:error ok:ok down:down ok:reachable / }),
   '/health 503 with Redis down: the page shows overall and Redis down') or diag($health);
my $colors = $B->js(q{['health-postgres', 'health-redis'].map(
    (id) => getComputedStyle(document.getElementById(id)).backgroundColor)});
isnt($colors->[1], $colors->[0], "... styled apart from the parts that are ok (@$colors)");
like($B->js('document.title'), qr/^\[DOWN\]/, '... and in the title');
$B->js(q{(() => { window.__health = () => { throw new TypeError('Failed to fetch'); }; return 1; })()});
ok(poll_until(10, sub { ($health = $B->js($HEALTH)) =~ /^down:unknown unknown:\? unknown:\? down:unreachable / }),
   'nginx not answering: the page shows it unreachable') or diag($health);
like($B->js(q{document.getElementById('health-detail').textContent}),
     qr/did not answer \(connection failed\); last answer at \d\d:/, '... with the time of its last answer');

$B->quit;
done_ahava();

# ---------------------------------------------------------------------------
# t/lib/cdp.js over pipes: one JSON object a line each way, every read with
# a deadline
package CDP;

use Carp qw(croak);

use constant JSONC => JSON::PP->new->utf8->canonical;   # at compile time: this code runs first

sub start {
    my ($class, %o) = @_;
    my $top = Ahava::Test::repo_root();
    pipe(my $cr, my $pw) or die "pipe: $!";
    pipe(my $pr, my $cw) or die "pipe: $!";
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        close $pw;
        close $pr;
        open STDIN, '<&', $cr or die;
        open STDOUT, '>&', $cw or die;
        open STDERR, '>>', $o{log} or die "$o{log}: $!";
        exec 'node', "$top/t/lib/cdp.js", '--chromium', $o{chromium}, '--profile', $o{profile},
             '--log', $o{log};
        exit 127;
    }
    close $cr;
    close $cw;
    $pw->autoflush(1);
    my $self = bless { pid => $pid, in => $pw, out => $pr, buf => '', seq => 0, log => $o{log} },
                     $class;
    my $ready = $self->_read(60, sub { defined $_[0]{event} });
    croak 'cdp.js: ' . ($ready ? $ready->{error} // 'no ready' : 'nothing in 60 s') . "\n"
          . (Ahava::Test::Util::slurp($o{log}) // '')
        unless $ready && $ready->{event} eq 'ready';
    $self->{browser} = $ready->{browser};
    return $self;
}

# The next line matching $want, within $timeout seconds (undef: none)
sub _read {
    my ($self, $timeout, $want) = @_;
    my $deadline = time + $timeout;
    my $sel = IO::Select->new($self->{out});
    while (1) {
        while ($self->{buf} =~ s/^([^\n]*)\n//) {
            my $m = eval { JSONC->decode($1) } or next;
            return $m if $want->($m);
            die "cdp.js: $m->{error}\n" if ($m->{event} // '') eq 'fatal';
        }
        my $left = $deadline - time;
        return undef if $left <= 0 || !$sel->can_read($left);
        my $n = sysread($self->{out}, $self->{buf}, 65536, length $self->{buf});
        return undef unless $n;
    }
}

sub call {
    my ($self, %cmd) = @_;
    my $timeout = delete $cmd{timeout} // 30;
    my $seq = ++$self->{seq};
    print { $self->{in} } JSONC->encode({ %cmd, seq => $seq }), "\n";
    my $r = $self->_read($timeout, sub { ($_[0]{seq} // 0) == $seq })
        or die "cdp.js: no answer to $cmd{cmd} in $timeout s\n";
    die "cdp.js: $cmd{cmd}: $r->{error}\n" unless $r->{ok};
    return $r;
}

# The value of a JavaScript expression in the page
sub js { $_[0]->call(cmd => 'eval', expr => $_[1])->{value} }

sub quit {
    my ($self) = @_;
    return unless $self->{pid};
    eval { print { $self->{in} } JSONC->encode({ cmd => 'quit', seq => 0 }), "\n" };
    close $self->{in};
    my $deadline = time + 15;
    while (time < $deadline) {
        return delete $self->{pid} if waitpid($self->{pid}, POSIX::WNOHANG()) == $self->{pid};
        select(undef, undef, undef, 0.1);
    }
    kill 'KILL', $self->{pid};
    waitpid($self->{pid}, 0);
    delete $self->{pid};
}

sub DESTROY { local ($@, $?); $_[0]->quit if $_[0]{pid} }
