# Prometheus metrics from nginx (issue 13): `ahava_metrics;` answers the
# sum of every worker's counters, kept in the shared memory zone
# "ahava_metrics".  Two workers; every scrape is checked by a real parser,
# `promtool check metrics` (Debian's prometheus package), and the numbers
# must move by exactly what the test did: requests by route and status,
# latency histograms, WebSocket sockets and users, events through the
# outbox, uploads accepted and refused by reason, the PostgreSQL pool
# (connections, 503s), Redis stopped and started (connected workers,
# reconnects), and a reload that keeps the counters.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Ahava::Test::Util qw(slurp poll_until run_capture);
use Ahava::Test::WS qw(ws_connect ws_config worker_pids tcp_owner_pid);
use Ahava::Messages qw(send_message);
use File::Temp qw(tempdir);
use IPC::Open3 qw(open3);
use IO::Socket::INET;
use POSIX ();

my $PROMTOOL = '/usr/bin/promtool';
plan skip_all => 'no promtool (Debian package prometheus)' unless -x $PROMTOOL;

setup(private_redis => 1);      # this file stops and starts Redis
my $redis = Ahava::Test::redis();

my $DATA = tempdir('ahava-metrics-XXXXXX', TMPDIR => 1, CLEANUP => 1);
mkdir "$DATA/uploads";
mkdir "$DATA/uploads/$_" for qw(images documents exports);
chmod 0777, $DATA, map { "$DATA/uploads/$_" } '', qw(images documents exports);

my $CONF = ws_config(http => q{
ahava_upload_root       $TEST_NGINX_DATA/uploads;
ahava_pg_pool_size      2;
ahava_pg_wait_queue     1;
ahava_pg_wait_timeout   30s;
}, server => q{
    location = /metrics { ahava_metrics; }
    location /api/messages/upload/ { ahava_upload; }
    location /uploads/ {
        ahava_download;
        root  $TEST_NGINX_DATA;
    }
});

my $N = start_nginx($CONF, workers => 2, vars => { DATA => $DATA });

# --- a scrape: the text, checked by promtool, as { 'name{labels}' => value }
my $scrapes = 0;
sub scrape {
    my $r = response(GET => '/metrics');
    $scrapes++;
    return (undef, $r) unless $r->status == 200;
    my %m;
    for my $l (split /\n/, $r->body) {
        next if $l =~ /^#/ || $l eq '';
        my ($k, $v) = $l =~ /^(\S+(?:\{[^}]*\})?) (\S+)$/ or return (undef, $r);
        $m{$k} = $v;
    }
    return (\%m, $r);
}

sub promtool_ok {
    my ($text, $name) = @_;
    my $pid = open3(my $in, my $out, undef, $PROMTOOL, 'check', 'metrics');
    print {$in} $text;
    close $in;
    my $report = do { local $/; <$out> } // '';
    waitpid($pid, 0);
    my $rc = $? >> 8;
    ok($rc == 0 && $report !~ /\S/, "promtool check metrics: $name")
        or diag("promtool exit $rc: $report");
}

sub req { 'ahava_http_requests_total{route="' . $_[0] . '",method="' . $_[1] . '",status="' . $_[2] . '"}' }
sub hist { 'ahava_http_request_duration_seconds_' . $_[0] . '{route="' . $_[1] . '",method="' . $_[2] . '"' . ($_[3] ? ',le="' . $_[3] . '"' : '') . '}' }
sub val { $_[0]{ $_[1] } // 0 }

my ($m, $r) = scrape();
is($r->status, 200, 'GET /metrics: 200');
like($r->header('content-type'), qr{^text/plain; version=0\.0\.4}, '... Prometheus text format 0.0.4');
promtool_ok($r->body, 'the first scrape');
ok($m, '... every sample line parses');
ok(poll_until(10, sub { my ($x) = scrape(); $x && val($x, 'ahava_nginx_workers') == 2 }), 'both workers count into the zone');

# every route of the configuration has its histogram before any request
for my $route (['/api/visits', 'GET'], ['/api/visits/:id', 'GET'], ['/api/visits/:id/status', 'PATCH'],
               ['/api/messages', 'POST'], ['/api/messages/visit/:id', 'GET'], ['/ws', 'GET'],
               ['/api/messages/upload/image', 'POST'], ['/uploads/images/:name', 'GET'], ['/health', 'GET']) {
    ok(exists $m->{ hist('count', @$route) }, "a histogram for $route->[1] $route->[0]");
}

# --- requests by route and status, across both workers ----------------------
my $before = $m;
my $LIST = 12;
for (1 .. $LIST) {
    is(response(GET => '/api/visits?limit=5', as => 'nurse1')->status, 200, "GET /api/visits $_") if $_ == 1;
    response(GET => '/api/visits?limit=5', as => 'nurse1') if $_ > 1;
}
is(response(GET => '/api/visits/cnosuchvisit0000000000000', as => 'nurse1')->status, 404, 'an unknown visit: 404');
is(response(GET => '/api/visits')->status, 401, 'no token: 401');
is(response(GET => '/api/visits/a/b/c', as => 'nurse1')->status, 404, 'no such route: 404');
is(response(DELETE => '/api/visits', as => 'nurse1')->status, 405, 'a method the route has not: 405');
is(response(GET => '/nothing/here')->status, 404, "nginx's own 404 through the JSON error page");

($m, $r) = scrape();
promtool_ok($r->body, 'after requests');
my $d = sub { val($m, $_[0]) - val($before, $_[0]) };
is($d->(req('/api/visits', 'GET', 200)), $LIST, "$LIST × 200 on GET /api/visits, summed over the workers");
is($d->(req('/api/visits', 'GET', 401)), 1, '401 on the route it was meant for');
is($d->(req('/api/visits/:id', 'GET', 404)), 1, '404 of an unknown visit on GET /api/visits/:id');
is($d->(req('other', 'any', 404)), 2, "a path no route has and nginx's own 404: route=\"other\"");
is($d->(req('other', 'any', 405)), 1, 'a method no route has: route="other"');

is($d->(hist('count', '/api/visits', 'GET')), $LIST + 1, 'the histogram counted every request of the route');
my @le = qw(0.001 0.002 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10 +Inf);
my @cum = map { val($m, hist('bucket', '/api/visits', 'GET', $_)) } @le;
ok(!grep({ $cum[$_] < $cum[$_ - 1] } 1 .. $#cum), 'its buckets are cumulative');
is($cum[-1], val($m, hist('count', '/api/visits', 'GET')), 'le="+Inf" is the count');
ok(val($m, hist('sum', '/api/visits', 'GET')) > 0, 'the sum of seconds grew');

my $t = response(POST => '/metrics');
is($t->status, 405, 'POST /metrics: 405');

# --- the pool's gauges: each worker publishes its own -------------------------
ok(poll_until(10, sub { my ($x) = scrape(); $x && val($x, 'ahava_pg_connections') >= 1 }),
   'ahava_pg_connections counts the open connections');
ok(val($m, 'ahava_pg_connections') <= 4, '... at most 2 per worker');

# --- WebSockets: sockets and users --------------------------------------------
my $w1 = ws_connect(as => 'patient1');
my $w2 = ws_connect(as => 'nurse1');
ok($w1->opened && $w2->opened, 'two sockets open (patient1, nurse1)');
ok(poll_until(10, sub { my ($x) = scrape(); $x && val($x, 'ahava_ws_connections') == 2 && val($x, 'ahava_ws_users') == 2 }),
   'ahava_ws_connections 2, ahava_ws_users 2');

# --- events through the outbox --------------------------------------------------
($before) = scrape();
my $msg = send_message('nurse1', $ID{visit1}, 'patient1', 'counted');
is($msg->status, 201, 'nurse1 sends a message');
ok($w1->next_message(10), 'patient1 got its event');
ok(poll_until(10, sub { my ($x) = scrape(); $x && val($x, 'ahava_events_published_total') > val($before, 'ahava_events_published_total') }),
   'ahava_events_published_total grew');
($m) = scrape();
is(val($m, 'ahava_outbox_relayed_total') - val($before, 'ahava_outbox_relayed_total'), 1, 'one outbox row relayed');
is(val($m, 'ahava_events_relayed_late_total') - val($before, 'ahava_events_relayed_late_total'), 0,
   '... right after its request, not late');

$w1->close(1000); $w2->close(1000);
ok(poll_until(10, sub { my ($x) = scrape(); $x && val($x, 'ahava_ws_connections') == 0 && val($x, 'ahava_ws_users') == 0 }),
   'closed: ahava_ws_connections 0, ahava_ws_users 0');

# --- uploads accepted and refused by reason -----------------------------------
sub upload {
    my ($endpoint, $name, $bytes, $type, $field) = @_;
    my $b = 'AhavaBoundary' . int(rand 1e9);
    $field //= $endpoint;
    my $body = "--$b\r\nContent-Disposition: form-data; name=\"$field\"; filename=\"$name\"\r\n"
             . "Content-Type: $type\r\n\r\n$bytes\r\n--$b--\r\n";
    return response(POST => "/api/messages/upload/$endpoint", as => 'nurse1',
                    headers => { 'Content-Type' => "multipart/form-data; boundary=$b" }, body => $body);
}
my ($rc, $png) = run_capture(['convert', '-size', '4x4', 'xc:red', 'png:-']);
($before) = scrape();
is(upload('image', 'red.png', $png, 'image/png')->status, 201, 'a real PNG: 201');
is(upload('image', 'note.png', "just text\n" x 10, 'image/png')->status, 415, 'text named .png: 415');
is(upload('image', 'red.png', $png, 'image/png', 'file')->status, 400, 'a file in the wrong field: 400');
{
    # a Content-Length over the endpoint's limit: 413 before any byte of it
    my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $N->port, Timeout => 10)
        or die "connect: $!";
    print {$sock} "POST /api/messages/upload/image HTTP/1.1\r\nHost: t\r\n"
        . 'Authorization: Bearer ' . token($ID{nurse1}) . "\r\n"
        . "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 99999999\r\n\r\n";
    my $line = <$sock> // '';
    like($line, qr{^HTTP/1\.1 413 }, 'a Content-Length of 99 MB: 413 at once');
    close $sock;
}
($m, $r) = scrape();
promtool_ok($r->body, 'after uploads');
is(val($m, 'ahava_uploads_rejected_total{reason="too_large"}')
   - val($before, 'ahava_uploads_rejected_total{reason="too_large"}'), 1, '... rejected, too_large +1');
is(val($m, 'ahava_uploads_accepted_total') - val($before, 'ahava_uploads_accepted_total'), 1, 'ahava_uploads_accepted_total +1');
is(val($m, 'ahava_uploads_rejected_total{reason="unsupported_type"}')
   - val($before, 'ahava_uploads_rejected_total{reason="unsupported_type"}'), 1, '... rejected, unsupported_type +1');
is(val($m, 'ahava_uploads_rejected_total{reason="invalid"}')
   - val($before, 'ahava_uploads_rejected_total{reason="invalid"}'), 1, '... rejected, invalid +1');
is(val($m, req('/api/messages/upload/image', 'POST', 415)) - val($before, req('/api/messages/upload/image', 'POST', 415)), 1,
   '... and the 415 on its route');

# --- the pool refuses: ahava_pg_rejected_total --------------------------------
# a locked table holds each worker's 2 connections and 1 waiter: of 12
# requests at least 6 are refused at once, whichever worker takes them
($before) = scrape();
my $lock = lock_table('visits');
my %held;
for (1 .. 12) {
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        my $s = eval { response(GET => '/api/visits/' . $ID{visit1}, as => 'nurse1', timeout => 60)->status } // 0;
        warn "# child: $@" if $@;
        POSIX::_exit($s == 503 ? 1 : $s == 200 ? 0 : 2);
    }
    $held{$pid} = undef;
}
my %status;
my $reap = sub {
    for my $pid (grep { !defined $held{$_} } keys %held) {
        next unless waitpid($pid, POSIX::WNOHANG()) == $pid;
        $held{$pid} = $? >> 8;
    }
    return scalar grep { defined } values %held;
};
ok(poll_until(20, sub { $reap->() >= 6 }), 'at least 6 of 12 requests answered while the table is locked');
my $refused = grep { defined($_) && $_ == 1 } values %held;
is(scalar(grep { defined } values %held), $refused, '... every one of them a 503') or diag(explain(\%held));
my $busy = 0;
# (a connection still opening prepares its statements: the lock holds it
# there, not busy)
ok(poll_until(10, sub { my ($x) = scrape(); $x && ($busy = val($x, 'ahava_pg_connections_busy')) >= 1 }),
   'ahava_pg_connections_busy counts a statement waiting on the lock') or diag("busy $busy");
$lock->release;
ok(poll_until(30, sub { $reap->() == 12 }), 'the lock released: every request answered');
is(scalar(grep { $_ == 2 } values %held), 0, '... with 200 or 503 only');
$refused = grep { $_ == 1 } values %held;
($m) = scrape();
# (the outbox's sweep may have been refused too: it is a statement)
cmp_ok(val($m, 'ahava_pg_rejected_total') - val($before, 'ahava_pg_rejected_total'), '>=', $refused,
   "ahava_pg_rejected_total counted the $refused refusals");
is(val($m, req('/api/visits/:id', 'GET', 503)) - val($before, req('/api/visits/:id', 'GET', 503)), $refused,
   '... and GET /api/visits/:id as many 503s');

# --- Redis stopped and started --------------------------------------------------
($before) = scrape();
is(val($before, 'ahava_redis_connected'), 2, 'ahava_redis_connected: both workers');
$redis->stop;
ok(poll_until(15, sub { my ($x) = scrape(); $x && val($x, 'ahava_redis_connected') == 0 }),
   'Redis stopped: ahava_redis_connected 0');
($m, $r) = scrape();
promtool_ok($r->body, 'with Redis down');
ok(val($m, 'ahava_redis_reconnects_total') > val($before, 'ahava_redis_reconnects_total'),
   'ahava_redis_reconnects_total grew');
# what changes owe Redis waits in the outbox, and is counted there
for my $i (1 .. 3) {
    is(send_message('nurse1', $ID{visit1}, 'patient1', "while Redis is down $i")->status, 201,
       "a message while Redis is down ($i)");
}
my $depth = 0;
ok(poll_until(15, sub { my ($x) = scrape(); $x && ($depth = val($x, 'ahava_outbox_depth')) == 3 }),
   'ahava_outbox_depth: the 3 rows waiting') or diag("depth $depth");
$redis->start;
ok(poll_until(30, sub { my ($x) = scrape(); $x && val($x, 'ahava_redis_connected') == 2 }),
   'Redis back: ahava_redis_connected 2');
ok(poll_until(15, sub { my ($x) = scrape(); $x && ($depth = val($x, 'ahava_outbox_depth')) == 0 }),
   'the outbox drained: ahava_outbox_depth 0')
    or diag("depth $depth, rows " . psql_value('SELECT count(*) FROM ahava_outbox'));
($m, $r) = scrape();
is(val($m, 'ahava_events_relayed_late_total') - val($before, 'ahava_events_relayed_late_total'), 3,
   'ahava_events_relayed_late_total: the 3 events, sent by the sweep');

# --- a worker killed -9 stops counting at once -----------------------------------
$N->{allow_log} = [qr/exited on signal 9/];
my $w3 = ws_connect(as => 'patient1');
ok($w3->opened, 'a socket for patient1');
ok(poll_until(10, sub { my ($x) = scrape(); $x && val($x, 'ahava_ws_connections') == 1 }), 'ahava_ws_connections 1');
my $owner = tcp_owner_pid($N->port, $w3->local_port);
ok($owner, "the worker holding it: $owner");
kill 'KILL', $owner;
ok(poll_until(20, sub {
    my @now = worker_pids($N);
    my ($x) = scrape();
    @now == 2 && !grep({ $_ == $owner } @now) && $x && val($x, 'ahava_nginx_workers') == 2
        && val($x, 'ahava_ws_connections') == 0 && val($x, 'ahava_ws_users') == 0;
}), 'killed: its socket no longer counted, the new worker counts');

# --- a reload keeps the counters ------------------------------------------------
($before) = scrape();
my %OLD = map { $_ => 1 } worker_pids($N);
$N->reload;
ok(poll_until(20, sub {
    my @now = worker_pids($N);
    my ($x) = scrape();
    @now == 2 && !grep({ $OLD{$_} } @now) && $x && val($x, 'ahava_nginx_workers') == 2;
}), 'after a reload: two new workers, and only they count');
($m, $r) = scrape();
is(val($m, req('/api/visits', 'GET', 200)), val($before, req('/api/visits', 'GET', 200)),
   'the counters went on: GET /api/visits 200 unchanged');
promtool_ok($r->body, 'after a reload');

done_ahava();
