# SPEC §4: "Every error our locations produce is this JSON, including the
# ones nginx itself raises there ... no HTML error pages on API routes."
# Run against the shipped example configuration (conf.d/ahava.conf).
use strict;
use warnings;
use Test::More;
use File::Temp ();
use Ahava::Test;
use Ahava::Test::Util qw(slurp);

setup();

my $example = slurp(repo_root() . '/conf.d/ahava.conf');
$example =~ s/\@AHAVA_PORT\@/127.0.0.1:\$TEST_NGINX_SERVER_PORT/g;
my $datadir = File::Temp::tempdir('ahava-060-XXXXXX', TMPDIR => 1, CLEANUP => 1);
$example =~ s/\@AHAVA_DATA_DIR\@/$datadir/g;
my $n = start_nginx($example);

sub raw_request {
    my ($raw) = @_;
    return Ahava::Test::HTTP::request($n->port, undef, undef, raw => $raw);
}

sub no_html {
    my ($r, $name) = @_;
    ok($r->is_json && $r->raw !~ /<html/i, "$name: application/json, no HTML")
        or diag($r->dump);
}

my $admin = token($ID{admin});
my $big = '{"x":"' . ('a' x 70_000) . '"}';

# --- 413 -------------------------------------------------------------------------
for my $case (['POST', '/api/visits'], ['GET', '/api/visits'],
              ['PATCH', "/api/visits/$ID{visit1}/status"], ['POST', '/health'],
              ['POST', '/nope'])
{
    my ($m, $p) = @$case;
    my $r = response($m => $p, token => $admin, body => $big,
                     headers => { 'Content-Type' => 'application/json' });
    api_error_is($r, 413, 'PAYLOAD_TOO_LARGE', "$m $p with a 70 KB body: JSON 413 PAYLOAD_TOO_LARGE");
}
{
    # just over and just under the 64 KiB limit (GET: the body is discarded)
    my $r = response(GET => '/api/visits', token => $admin, body => 'x' x (64 * 1024 + 1));
    api_error_is($r, 413, 'PAYLOAD_TOO_LARGE', '64 KiB + 1 byte: 413');
    $r = response(GET => '/api/visits', token => $admin, body => 'x' x (64 * 1024));
    api_ok($r, 'exactly 64 KiB on a GET: accepted (and discarded)');
}

{
    # nginx's own 413 (the declared length over client_max_body_size) before any of the
    # body arrived: its error page, found by URI with that length still to come, is JSON
    my $r = raw_request("POST /nope HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                        . "Content-Length: 100000\r\n\r\n");
    api_error_is($r, 413, 'PAYLOAD_TOO_LARGE', 'POST /nope declaring 100 000 bytes, none sent yet: JSON 413');
    no_html($r, '... the 413 before the body');
}

# --- 404 -------------------------------------------------------------------------
for my $p ('/nope', '/api/nothing', '/api/visits/a/b', '/api/visitsx', '/index.html',
           '/api/visits/bad.id', '/')
{
    my $r = response(GET => $p, token => $admin);
    api_error_is($r, 404, 'NOT_FOUND', "GET $p: JSON 404 NOT_FOUND");
}
api_error_is(response(GET => '/nope'), 404, 'NOT_FOUND', 'GET /nope without a token: JSON 404');

# --- 405 -------------------------------------------------------------------------
for my $case (['POST', '/api/visits'], ['PUT', '/api/visits'], ['DELETE', '/api/visits'],
              ['DELETE', "/api/visits/$ID{visit1}"], ['POST', '/health'], ['DELETE', '/health'])
{
    my ($m, $p) = @$case;
    my $r = response($m => $p, token => $admin, body => '{}',
                     headers => { 'Content-Type' => 'application/json' });
    is($r->status, 405, "$m $p: 405") or diag($r->dump);
    no_html($r, "$m $p");
    ok($r->json && JSON::PP::is_bool($r->json->{success}) && !$r->json->{success}
       && length($r->json->{code} // ''), "$m $p: the error envelope");
}

# --- 400 raised by nginx ----------------------------------------------------------------
{
    my $r = raw_request("GET /api/visits HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    api_error_is($r, 400, 'VALIDATION_ERROR', 'two Host headers: JSON 400');
    $r = raw_request("GET /api/visits HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                     . "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    api_error_is($r, 400, 'VALIDATION_ERROR', 'Content-Length with Transfer-Encoding: JSON 400');
    $r = raw_request("GET /api/visits HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n");
    api_error_is($r, 400, 'VALIDATION_ERROR', 'a bad Content-Length: JSON 400');
}

{
    # a token too long for nginx's header buffers is a bad token (issue 7)
    my $r = response(GET => '/api/visits', headers => { Authorization => 'Bearer ' . ('x' x 10_000) });
    api_error_is($r, 401, 'TOKEN_INVALID', 'a 10 KB Authorization line: a JSON 401');
    $r = response(GET => '/api/visits', headers => { 'X-Long' => 'x' x 10_000 }, token => $admin);
    ok($r->status == 400 && $r->is_json && $r->raw !~ /<html/i,
       'a 10 KB header line: a JSON 400') or diag($r->dump);
}
{
    my $r = response(GET => '/api/visits?q=' . ('x' x 9000), token => $admin);
    ok($r->status == 414 && $r->is_json && $r->raw !~ /<html/i, 'a 9 KB URI: a JSON 414')
        or diag($r->dump);
    # a path that decodes to NUL names nothing (SPEC §4, issue 7)
    $r = raw_request("GET /api/visits/%00 HTTP/1.1\r\nHost: a\r\n\r\n");
    api_error_is($r, 404, 'NOT_FOUND', "request line 'GET /api/visits/%00': a JSON 404");
    for my $line ("GET /api/visits?a=b c HTTP/1.1", 'GARBAGE') {
        $r = raw_request("$line\r\nHost: a\r\n\r\n");
        ok($r->status == 400 && $r->is_json && $r->raw !~ /<html/i,
           "request line '$line': a JSON 400") or diag($r->dump);
    }
}

# --- the connection stays usable after an early error on a request with a body ---------
for my $case (['POST', '/api/visits', 405], ['POST', '/health', 405],
              ['GET', '/api/visits/bad.id', 404], ['GET', '/api/visits/a/b', 404])
{
    my ($m, $p, $status) = @$case;
    my $body = '{"status":"EN_ROUTE"}';
    my $raw = "$m $p HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer $admin\r\n"
            . "Content-Type: application/json\r\nContent-Length: " . length($body) . "\r\n\r\n$body"
            . "GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    my $c = Ahava::Test::HTTP::Conn->open_raw($n->port, $raw);
    Ahava::Test::HTTP::wait_all([$c], 10);
    my @r = $c->responses;
    is($r[0] && $r[0]->status, $status, "keep-alive: $m $p with a body: $status");
    {
        ok(@r == 2 && $r[1]->status == 200 && ($r[1]->json || {})->{status},
           "... then a pipelined GET /health on the same connection: 200")
            or diag(join "\n---\n", map { $_->dump } @r);
    }
}
{
    # the same with a GET that reaches the handler: it discards the body
    my $body = '{"a":1}';
    my $raw = "GET /api/visits HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer $admin\r\n"
            . "Content-Length: " . length($body) . "\r\n\r\n$body"
            . "GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    my $c = Ahava::Test::HTTP::Conn->open_raw($n->port, $raw);
    Ahava::Test::HTTP::wait_all([$c], 10);
    my @r = $c->responses;
    ok(@r == 2 && $r[0]->status == 200 && $r[1]->status == 200,
       'keep-alive: GET /api/visits with a body, then GET /health: 200, 200')
        or diag(join "\n---\n", map { $_->dump } @r);
}

done_ahava();
