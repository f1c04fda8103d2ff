# GET /ws from a real browser (SPEC §8, issue 10): headless Chromium loads a
# page served by the test's nginx; the page opens one socket with ?token=
# and one with the subprotocol carrier (`new WebSocket(url, ['bearer',
# jwt])`, the two a browser can use), and reports what happens by
# requesting /report?... on the same nginx, which the test reads back from
# that location's access log.  A message posted over HTTP and a PATCH of a
# visit must reach both sockets; the subprotocol socket must see `bearer`
# selected.  Skipped when no Chromium is installed.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Ahava::Test::Util qw(slurp);
use Ahava::Test::WS qw(ws_config);
use Ahava::Messages qw(send_message data_of);
use Ahava::Visits qw(new_visit mutate);
use File::Path qw(make_path);
use File::Temp ();

my ($chromium) = grep { -x } qw(/usr/bin/chromium /usr/bin/chromium-browser);
plan skip_all => 'no Chromium (Debian package chromium)' unless $chromium;

setup();

my $CONF = ws_config(http => q{log_format  report  '$arg_e';}, server => <<'_EOC_');
    location /page/ { root $TEST_NGINX_SERVROOT/html; }
    location = /report { access_log $TEST_NGINX_SERVROOT/logs/report.log report; return 204; }
    location = /favicon.ico { return 204; }
_EOC_

my $N = start_nginx($CONF, workers => 1);
ok(poll_until(10, sub { ((response(GET => '/health')->json || {})->{redis} // '') eq 'ok' }),
   'nginx is connected to Redis');

my $root = $N->servroot;
make_path("$root/html/page");
open my $fh, '>', "$root/html/page/ws.html" or die $!;
print {$fh} <<'_HTML_';
<!doctype html>
<html><head><meta charset="utf-8"><title>ws</title></head><body><script>
const q = new URLSearchParams(location.search);
const base = 'ws://' + location.host + '/ws';
function report(e) { fetch('/report?e=' + encodeURIComponent(e)).catch(() => {}); }
function watch(name, ws) {
    ws.onopen = () => report('open ' + name + ' protocol=' + ws.protocol);
    ws.onerror = () => report('error ' + name);
    ws.onclose = (ev) => report('close ' + name + ' ' + ev.code);
    ws.onmessage = (ev) => {
        let f;
        try { f = JSON.parse(ev.data); } catch (e) { report('bad ' + name); return; }
        const d = f.data || {};
        report('frame ' + name + ' ' + f.type + ' ' + (d.content || d.status || '')
               + ' ts=' + (f.timestamp ? 'yes' : 'no'));
    };
}
watch('query', new WebSocket(base + '?token=' + encodeURIComponent(q.get('t'))));
watch('protocol', new WebSocket(base, ['bearer', q.get('t')]));
</script></body></html>
_HTML_
close $fh;

my $log = "$root/logs/report.log";
sub unescape { (my $s = $_[0]) =~ s/%([0-9A-Fa-f]{2})/chr hex $1/ge; $s }
sub reports { map { unescape($_) } split /\n/, (slurp($log) // '') }
sub reported {
    my ($re, $timeout) = @_;
    return poll_until($timeout // 15, sub { grep { $_ =~ $re } reports() });
}

my $profile = File::Temp::tempdir('ahava-chromium-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $url = 'http://127.0.0.1:' . $N->port . '/page/ws.html?t=' . token($ID{patient1});
my $pid = fork // die "fork: $!";
if (!$pid) {
    open STDOUT, '>', "$root/logs/chromium.log";
    open STDERR, '>&', \*STDOUT;
    exec $chromium, '--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run',
         '--disable-dev-shm-usage', '--disable-background-networking', "--user-data-dir=$profile",
         '--remote-debugging-port=0', $url;
    exit 127;
}

ok(reported(qr/^open query protocol=$/, 60), 'Chromium: the ?token= socket opened')
    or diag(join("\n", reports()), "\n", slurp("$root/logs/chromium.log") // '');
ok(reported(qr/^open protocol protocol=bearer$/), "Chromium: the subprotocol socket opened, 'bearer' selected");

my $r = send_message('nurse1', $ID{visit1}, 'patient1', 'from the nurse to the browser');
is($r->status, 201, 'nurse1 posts a message to patient1');
for my $via (qw(query protocol)) {
    ok(reported(qr/^frame $via NEW_MESSAGE from the nurse to the browser ts=yes$/),
       "the $via socket got the NEW_MESSAGE");
}

my $V = new_visit(status => 'SCHEDULED');
$r = mutate('status', $V, as => 'nurse1', body => { status => 'EN_ROUTE' });
is($r->status, 200, 'nurse1 PATCHes a visit of patient1 to EN_ROUTE');
for my $via (qw(query protocol)) {
    ok(reported(qr/^frame $via VISIT_STATUS_UPDATED EN_ROUTE ts=yes$/),
       "the $via socket got VISIT_STATUS_UPDATED");
}
is(scalar(grep { /^frame \S+ NEW_MESSAGE/ } reports()), 2, 'each socket got the message once');
ok(!grep({ /^(error|close|bad) / } reports()), 'no socket failed or closed')
    or diag(join("\n", reports()));

kill 'TERM', $pid;
waitpid($pid, 0);
done_ahava();
