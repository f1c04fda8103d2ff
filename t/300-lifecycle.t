# The request lifecycle (issue 7): an answer is finished by nginx's own
# writer whatever its size and however slowly the client reads; a client
# that never reads is closed after send_timeout; after an early answer
# (401, 413, 415, 400) nothing else runs; authentication comes before the
# body; chunked bodies work.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Ahava::Visits qw();
use IO::Select;
use IO::Socket::INET;
use Socket qw(SOL_SOCKET SO_RCVBUF);
use JSON::PP ();
use Time::HiRes qw(time sleep);

setup();

my $CONF = <<'_EOC_';
ahava_database          env:DATABASE_URL;
ahava_redis             env:REDIS_URL;
ahava_jwt_secret        env:JWT_SECRET;
ahava_encryption_key    env:ENCRYPTION_KEY;
ahava_user_cache_ttl    60s;

server {
    # a small send buffer: a client that does not read blocks nginx soon
    listen       127.0.0.1:$TEST_NGINX_SERVER_PORT sndbuf=32k;
    server_name  _;
    client_max_body_size     64k;
    client_body_buffer_size  64k;
    send_timeout             2s;
    error_page 400 401 403 404 405 413 414 429 494 500 501 502 503 504 505
               /_ahava_error;

    location = /health { ahava_health; }
    location /api/visits { ahava_visits; }
    location /api/messages { ahava_messages; }
    location / { return 404; }
    location = /_ahava_error { internal; ahava_error_page; }
}
_EOC_

my $n = start_nginx($CONF, workers => 1);
my $JSON = JSON::PP->new->ascii->canonical;

# --- a page of 3 MB: every byte arrives, however the client reads ----------
# a visit of its own (patient1, nurse1), with only these messages: the seed's on visit 3
# are timed from today's 08:00 UTC, so before then they sorted among the page's
my $V = Ahava::Visits::new_visit(status => 'IN_PROGRESS');
my $content = "\x{1}" x 5000; # 30 000 bytes once JSON-escaped
for my $i (1 .. 103) {
    my $r = response(POST => '/api/messages', as => 'nurse1',
        headers => { 'Content-Type' => 'application/json' },
        body => $JSON->encode({ visitId => $V, recipientId => $ID{patient1},
                                content => $content }));
    $r->status == 201 or do { fail("message $i: 201"); diag($r->dump); last };
}
pass('103 messages of 5000 x U+0001 sent (a page of 100 after the first 3)');

my $PAGE = "/api/messages/visit/$V?limit=100&offset=3";

{
    my $r = response(GET => $PAGE, as => 'patient1', timeout => 20);
    api_ok($r, 'a fast reader gets the 3 MB page');
    ok(!$r->error, '... whole (no truncation)') or diag($r->error);
    cmp_ok(length $r->raw, '>', 3_000_000, '... ' . length($r->raw) . ' bytes');
    is(scalar @{ ($r->json // {})->{data} || [] }, 100, '... with its 100 messages');
    ok(!(grep { ($_->{content} // '') ne $content } @{ ($r->json // {})->{data} || [] }),
       '... each one exactly as sent');
}

# a slow reader: a small receive buffer, 16 KB every 10 ms
sub slow_get {
    my ($path, %o) = @_;
    # a small receive buffer, set before connecting (the window follows)
    my $s = IO::Socket::INET->new(Proto => 'tcp') or die $!;
    setsockopt($s, SOL_SOCKET, SO_RCVBUF, 4096) or die $!;
    $s->connect(Socket::pack_sockaddr_in($n->port, Socket::inet_aton('127.0.0.1')))
        or die "connect: $!";
    $s->autoflush(1);
    my $tok = token($ID{ $o{as} });
    print {$s} "GET $path HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
             . "Authorization: Bearer $tok\r\n\r\n";
    return $s;
}

{
    my $s = slow_get($PAGE, as => 'patient1');
    my ($buf, $t0) = ('', time);
    my $sel = IO::Select->new($s);
    while (time - $t0 < 60) {
        last unless $sel->can_read(5);      # a stalled answer fails, not hangs
        my $n = sysread($s, my $chunk, 16384);
        last if !defined $n || $n == 0;
        $buf .= $chunk;
        sleep 0.01;
    }
    close $s;
    my ($res) = Ahava::Test::HTTP::parse_responses($buf);
    is($res && $res->status, 200, 'a slow reader (16 KB per 10 ms) gets 200');
    ok($res && !$res->error, '... and the whole body')
        or diag(($res && $res->error) . ': ' . length($buf) . ' bytes read');
    is($res && scalar @{ ($res->json // {})->{data} || [] }, 100, '... all 100 messages');
    like($n->access_log, qr{GET /api/messages/visit/\S+ HTTP/1\.1" 200 3\d{6} },
         '... and an access-log line with the whole size');
}

# a client that never reads: closed after send_timeout (2 s)
{
    my $before = () = $n->access_log =~ /limit=100&offset=4/g;
    my $s = slow_get("/api/messages/visit/$V?limit=100&offset=4", as => 'patient1');
    my $t0 = time;
    my $logged = poll_until(10, sub {
        (() = $n->access_log =~ /limit=100&offset=4/g) > $before });
    ok($logged, 'a client that never reads is finished by nginx (access-log line)');
    cmp_ok(time - $t0, '<', 8, sprintf('... within send_timeout and a margin (%.1f s)',
                                       time - $t0));
    error_log_like(qr/client timed out/, '... "client timed out" in the error log');
    close $s;
}

# --- after an early answer nothing else runs --------------------------------
my $PATIENT = token($ID{patient1});
api_ok(response(GET => '/api/visits', token => $PATIENT), 'warm-up: the patient is cached');
api_ok(response(GET => '/api/visits', as => 'admin'), 'warm-up: the admin is cached');

sub visit1_state {
    psql_value(qq{SELECT status || '/' || "updatedAt" FROM visits WHERE id = '$ID{visit1}'});
}
sub audit_count {
    psql_value(q{SELECT count(*) FROM audit_logs});
}
my $state0 = visit1_state();

sub early {
    my ($name, $status, $code, %o) = @_;
    my $audit0 = audit_count();
    my $counted = reset_statements();
    my $r = response(POST => "/api/visits/$ID{visit1}/cancel", %o);
    api_error_is($r, $status, $code, "$name: $status $code");
    # a barrier: a request that needs no statement, on the same worker
    is(response(GET => '/health')->status, 200, "$name: (barrier)");
    SKIP: {
        skip 'no pg_stat_statements', 1 unless $counted;
        # (a 401's own security event is written to audit_logs, later)
        is(statement_calls(except => 'audit_logs'), 0,
           "$name: nginx ran no statement after answering");
    }
    is(visit1_state(), $state0, "$name: the visit is untouched");
    is(audit_count(), $audit0, "$name: no audit row") unless $o{audit_ok};
    return $r;
}

early('text/plain body, valid token', 415, 'UNSUPPORTED_MEDIA_TYPE',
      token => $PATIENT, headers => { 'Content-Type' => 'text/plain' },
      body => '{"reason":"x"}');
early('JSON; charset=latin1', 415, 'UNSUPPORTED_MEDIA_TYPE',
      token => $PATIENT, headers => { 'Content-Type' => 'application/json; charset=latin1' },
      body => '{"reason":"x"}');
early('a reason of the wrong type', 400, 'VALIDATION_ERROR',
      token => $PATIENT, headers => { 'Content-Type' => 'application/json' },
      body => '{"reason":5}');
early('not JSON', 400, 'VALIDATION_ERROR',
      token => $PATIENT, headers => { 'Content-Type' => 'application/json' },
      body => '{"reason":');
early('Content-Length over 64 KiB', 413, 'PAYLOAD_TOO_LARGE',
      token => $PATIENT, headers => { 'Content-Type' => 'application/json' },
      body => '{"reason":"' . ('x' x 70000) . '"}');
{
    # the 401's own security event is the only thing recorded
    my $r = early('no token, text/plain body', 401, 'TOKEN_MISSING', audit_ok => 1,
                  headers => { 'Content-Type' => 'text/plain' }, body => '{"reason":"x"}');
    is_deeply($r->json, { success => JSON::PP::false, error => 'No token provided',
                          code => 'TOKEN_MISSING' }, '... the SPEC body');
    early('no token, a bad JSON body', 401, 'TOKEN_MISSING', audit_ok => 1,
          headers => { 'Content-Type' => 'application/json' }, body => '{{{');
    early('no token, a huge body', 401, 'TOKEN_MISSING', audit_ok => 1,
          headers => { 'Content-Type' => 'application/json' },
          body => 'x' x 70000);
    early('an expired token, a bad body', 401, 'TOKEN_EXPIRED', audit_ok => 1,
          token => token($ID{patient1}, exp => -60),
          headers => { 'Content-Type' => 'text/plain' }, body => 'zzz');
    error_log_unlike(qr/UNSUPPORTED_MEDIA_TYPE.*TOKEN|AUTH_FAILED.*after/,
                     'no step ran after an answer');
}

# a 401 does not read the body: the connection stays usable (keep-alive)
{
    my $body = '{"reason":"x"}';
    my $raw = "POST /api/visits/$ID{visit1}/cancel HTTP/1.1\r\nHost: x\r\n"
            . "Content-Type: text/plain\r\nContent-Length: " . length($body) . "\r\n\r\n$body"
            . "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    my $c = Ahava::Test::HTTP::Conn->open_raw($n->port, $raw);
    Ahava::Test::HTTP::wait_all([$c], 5);
    my @r = $c->responses;
    is(scalar @r, 2, 'a 401 then a pipelined request on the same connection: two answers');
    is($r[0] && $r[0]->status, 401, '... 401 first');
    is($r[1] && $r[1]->status, 200, '... then /health 200 (the body was discarded)');
}

# --- chunked request bodies ---------------------------------------------------
sub chunked {
    my ($method, $path, $body, %o) = @_;
    my $chunks = '';
    my @pieces = $o{pieces} ? @{ $o{pieces} } : ($body =~ /(.{1,7})/gs);
    $chunks .= sprintf("%x\r\n%s\r\n", length $_, $_) for @pieces;
    $chunks .= "0\r\n\r\n";
    return response($method, $path, as => $o{as},
        headers => { 'Content-Type' => 'application/json',
                     'Transfer-Encoding' => 'chunked' },
        body => $chunks);
}

{
    my $r = chunked(POST => '/api/messages',
        $JSON->encode({ visitId => $V, recipientId => $ID{nurse1}, content => 'chunked hello' }),
        as => 'patient1');
    api_ok($r, 'POST /api/messages with a chunked body (7-byte chunks): 201', status => 201);
    is($r->json && $r->json->{data}{content}, 'chunked hello', '... content as sent');

    $r = chunked(PATCH => "/api/visits/$ID{visit2}/status", '{"status":"ARRIVED"}',
                 as => 'nurse2');
    api_ok($r, 'PATCH status with a chunked body: 200');
    is($r->json && $r->json->{data}{status}, 'ARRIVED', '... ARRIVED');

    $r = chunked(POST => "/api/visits/$ID{visit3}/location", '{"lat":-26.1,"lng":28.0}',
                 as => 'nurse1');
    api_ok($r, 'POST location with a chunked body: 200');

    $r = chunked(POST => '/api/messages/read', '{"messageIds":["' . $ID{message3} . '"]}',
                 as => 'patient1');
    api_ok($r, 'POST /api/messages/read chunked: 200');

    $r = chunked(POST => "/api/visits/$ID{visit3}/nurse-report", '{"nurseReport":"ok"}',
                 as => 'nurse1', pieces => ['{"nurseReport":"ok"}', '']);
    api_ok($r, 'a chunked body whose chunks are one piece: 200');

    $r = chunked(POST => '/api/messages', '{"visitId":', as => 'patient1');
    api_error_is($r, 400, 'VALIDATION_ERROR', 'a chunked body that is not JSON: 400');

    # 15 KB in chunks of 1 byte: 90 KB on the wire, more than the body's
    # buffer, so nginx writes the (decoded, 15 KB) body to a temp file
    my $report = join(' ', map { "note$_" } 1 .. 2000);
    $r = chunked(POST => "/api/visits/$ID{visit3}/nurse-report",
                 $JSON->encode({ nurseReport => $report }), as => 'nurse1',
                 pieces => [split //, $JSON->encode({ nurseReport => $report })]);
    api_ok($r, 'a 15 KB body in chunks of 1 byte (90 KB on the wire): 200');
    ok($r->json && ($r->json->{data}{nurseReport} // '') eq $report, '... the report as sent');
    unlike($n->error_log, qr/\[alert\].*temp file/, '... no alert about a temp file');

    $r = chunked(POST => '/api/messages', '{"content":"' . ('y' x 70000) . '"}',
                 as => 'patient1', pieces => [('{"content":"' . ('y' x 70000) . '"}') =~ /(.{1,8000})/gs]);
    api_error_is($r, 413, 'PAYLOAD_TOO_LARGE', 'a chunked body over 64 KiB: 413');

    # the same body sent only once nginx reads it (Expect: 100-continue), so that the 413
    # comes while the body is being read: its error page, found by URI with 70 000
    # bytes counted, was refused again by client_max_body_size, as nginx's HTML page
    my $msgs0 = psql_value('SELECT count(*) FROM messages');
    my $counted = reset_statements();
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $n->port,
                                  Proto => 'tcp', Timeout => 5) or die "connect: $!";
    print {$s} "POST /api/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        . $PATIENT . "\r\nContent-Type: application/json\r\n"
        . "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n";
    my $in = '';
    my $sel = IO::Select->new($s);
    while ($in !~ /\r\n\r\n/ && $sel->can_read(10)) {
        sysread($s, $in, 4096, length $in) or last;
    }
    like($in, qr{^HTTP/1\.1 100 Continue\r\n\r\n\z}, 'Expect: 100-continue: nginx asks for the body');
    my $body = '{"content":"' . ('y' x 70000) . '"}';
    my $out = join('', map { sprintf("%x\r\n%s\r\n", length $_, $_) } $body =~ /(.{1,8000})/gs)
            . "0\r\n\r\n";
    {
        local $SIG{PIPE} = 'IGNORE';
        while (length $out) {
            my $w = syswrite($s, $out) or last;     # the server may close first
            substr($out, 0, $w) = '';
        }
    }
    # the answer, not the close: nginx lingers for the rest of the body
    $in = '';
    my $ans;
    while ($sel->can_read(10)) {
        sysread($s, $in, 65536, length $in) or last;
        ($ans) = Ahava::Test::HTTP::parse_responses($in);
        last if $ans && !$ans->{error};
    }
    close $s;
    ok($ans, 'a chunked body over 64 KiB after 100 Continue: an answer')
        or $ans = Ahava::Test::Response->new;
    api_error_is($ans, 413, 'PAYLOAD_TOO_LARGE', 'a chunked body over 64 KiB read after 100 Continue: JSON 413');
    is(response(GET => '/health')->status, 200, '... (barrier)');
    SKIP: {
        skip 'no pg_stat_statements', 1 unless $counted;
        is(statement_calls(except => 'audit_logs'), 0, '... nginx ran no statement after the 413');
    }
    is(psql_value('SELECT count(*) FROM messages'), $msgs0, '... no message stored');

    # an answer before the body is read does not ask for it first
    for my $case (['no token', '', 50_000_000, 401],
                  ['a declared length over 64 KiB', "Authorization: Bearer $PATIENT\r\n", 10_000_000, 413]) {
        my ($what, $auth, $len, $want) = @$case;
        my $c = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $n->port,
                                      Proto => 'tcp', Timeout => 5) or die "connect: $!";
        print {$c} "POST /api/messages HTTP/1.1\r\nHost: x\r\n$auth"
            . "Content-Type: application/json\r\nContent-Length: $len\r\nExpect: 100-continue\r\n\r\n";
        my $got = '';
        my $cs = IO::Select->new($c);
        while ($got !~ /\r\n\r\n/ && $cs->can_read(5)) {
            sysread($c, $got, 4096, length $got) or last;
        }
        like($got, qr{^HTTP/1\.1 $want }, "Expect: 100-continue, $what: $want at once, no 100 Continue first")
            or diag($got);
        like($got, qr{\r\nConnection: close\r\n}i, '... and the connection is closed, not read to its end')
            if $want == 413;
        close $c;
    }

    $r = chunked(POST => "/api/visits/$ID{visit1}/cancel", '', as => 'patient1', pieces => []);
    api_ok($r, 'an empty chunked body (cancel without a reason): 200');
}

done_ahava();
