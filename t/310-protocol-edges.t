# The edges of the protocol found by trying the API as a new user would
# (issue 7, item 9): nginx's own 501/505 as JSON, JWT "crit", NUL and
# oversized tokens, 405's code, Content-Type charsets, strict query
# arguments, unknown paths, U+0000 in content, the visit detail by
# participation, and the code a concurrent loser gets.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use JSON::PP ();

setup();

my $CONF = <<'_EOC_';
ahava_database          env:DATABASE_URL;
ahava_redis             env:REDIS_URL;
ahava_jwt_secret        env:JWT_SECRET;
ahava_encryption_key    env:ENCRYPTION_KEY;
ahava_user_cache_ttl    0;

server {
    listen       127.0.0.1:$TEST_NGINX_SERVER_PORT;
    server_name  _;
    client_max_body_size     64k;
    client_body_buffer_size  64k;
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
my $ADMIN = token($ID{admin});

sub raw {
    my ($text) = @_;
    return Ahava::Test::HTTP::request($n->port, undef, undef, raw => $text);
}

# --- nginx's own errors: JSON, never its HTML page -----------------------------
api_error_is(raw("GET /api/visits HTTP/2.0\r\nHost: x\r\n\r\n"), 505, 'VALIDATION_ERROR',
             'request line HTTP/2.0: 505 JSON');
for my $te ('gzip', 'identity', 'chunked, chunked') {
    api_error_is(raw("POST /api/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: $te\r\n"
                     . "Connection: close\r\n\r\n"),
                 501, 'VALIDATION_ERROR', "Transfer-Encoding: $te: 501 JSON");
}

# --- JWT ----------------------------------------------------------------------------
{
    my $t = token($ID{admin}, header => { crit => ['exp'] });
    api_error_is(response(GET => '/api/visits', token => $t), 401, 'TOKEN_INVALID',
                 'a JWT whose crit names an extension we do not implement: 401');
    $t = token($ID{admin}, header => { crit => 'x' });
    api_error_is(response(GET => '/api/visits', token => $t), 401, 'TOKEN_INVALID',
                 'a JWT with a malformed crit: 401');
    my $long = token($ID{admin}, claims => { pad => 'p' x 9000 });
    my $r = response(GET => '/api/visits', token => $long);
    api_error_is($r, 401, 'TOKEN_INVALID', 'a token of ' . length($long)
                 . ' bytes (over nginx\'s 8k header buffer): 401, not 400');
    $long = token($ID{admin}, claims => { pad => 'p' x 40000 });
    api_error_is(response(GET => '/api/visits', token => $long), 401, 'TOKEN_INVALID',
                 'a token of 53 KB: 401');
}

# --- paths and methods ----------------------------------------------------------
api_error_is(response(GET => '/api/visits/cdemovisit%00000000000001', token => $ADMIN),
             404, 'NOT_FOUND', '%00 inside a path id: 404 NOT_FOUND');
api_error_is(response(GET => '/api/visits/%00', token => $ADMIN),
             404, 'NOT_FOUND', 'a path id of %00 alone: 404 NOT_FOUND');
api_error_is(response(GET => '/api/messages/visit', token => $ADMIN),
             404, 'NOT_FOUND', 'GET /api/messages/visit (no id): 404');
api_error_is(response(DELETE => '/api/messages/visit', token => $ADMIN),
             404, 'NOT_FOUND', 'DELETE /api/messages/visit: 404 (not a message id)');
{
    my $r = response(PUT => '/api/visits', token => $ADMIN);
    api_error_is($r, 405, 'METHOD_NOT_ALLOWED', 'PUT /api/visits: 405 METHOD_NOT_ALLOWED');
    like($r->header('allow') // '', qr/\bGET\b/, '... with an Allow header naming GET');
    $r = response(GET => "/api/visits/$ID{visit1}/cancel", token => $ADMIN);
    api_error_is($r, 405, 'METHOD_NOT_ALLOWED', 'GET on a POST route: 405 METHOD_NOT_ALLOWED');
    like($r->header('allow') // '', qr/^POST$/, '... Allow: POST');
}

# --- Content-Type -----------------------------------------------------------------
{
    my $body = '{"reason":"edge"}';
    for my $ct ('application/json; charset=latin1', 'application/json;charset=ISO-8859-1',
                'application/jsonx', 'text/json', 'application/json; charset=utf-16') {
        api_error_is(response(POST => "/api/visits/$ID{visit1}/cancel", token => $ADMIN,
                              headers => { 'Content-Type' => $ct }, body => $body),
                     415, 'UNSUPPORTED_MEDIA_TYPE', "Content-Type '$ct': 415");
    }
    is(psql_value("SELECT status FROM visits WHERE id = '$ID{visit1}'"), 'SCHEDULED',
       '... and the visit was not cancelled by any of them');
    api_ok(response(GET => '/api/visits', token => $ADMIN,
                    headers => { 'Content-Type' => 'application/json; charset="UTF-8"' }),
           'charset="UTF-8" (quoted, any case) is JSON');
}

# --- query arguments: strict -------------------------------------------------------
for my $q ('limit=1&limit=2', 'unknown=1', 'limit', 'limit=5&', '%00=1', 'limit=1&li%6dit=5',
           'status=SCHEDULED&status=EN_ROUTE', '&', 'limit=1&&offset=1', '=1') {
    api_error_is(response(GET => "/api/visits?$q", token => $ADMIN), 400, 'VALIDATION_ERROR',
                 "GET /api/visits?$q: 400");
}
api_error_is(response(GET => "/api/messages/visit/$ID{visit3}?unreadOnly=true&unreadOnly=false",
                      token => $ADMIN), 400, 'VALIDATION_ERROR', 'messages page: a repeated argument: 400');
api_error_is(response(GET => "/api/messages/unread/count?x=1", token => $ADMIN), 400,
             'VALIDATION_ERROR', 'unread count takes no argument: 400');
api_error_is(response(GET => "/api/visits/$ID{visit1}?limit=1", token => $ADMIN), 400,
             'VALIDATION_ERROR', 'the visit detail takes no argument: 400');
api_ok(response(GET => '/api/visits?', token => $ADMIN), 'an empty query string is no argument');
api_ok(response(GET => '/api/visits?li%6dit=5&sortOrder=%61sc', token => $ADMIN),
       'names and values are percent-decoded');
api_ok(response(GET => '/api/visits?limit=2&offset=1&sortBy=status&sortOrder=asc&status=COMPLETED',
                token => $ADMIN), 'every known argument once: 200');

# --- U+0000 in content --------------------------------------------------------------
{
    my $text = "before\x{0}after \x{1F600}";
    my $r = response(POST => '/api/messages', as => 'nurse1',
        headers => { 'Content-Type' => 'application/json' },
        body => $JSON->encode({ visitId => $ID{visit3}, recipientId => $ID{patient1},
                                content => $text }));
    api_ok($r, 'a message with U+0000 inside: 201', status => 201);
    is($r->json && $r->json->{data}{content}, $text, '... the 201 carries it whole');
    my $id = $r->json && $r->json->{data}{id};
    my $page = response(GET => "/api/messages/visit/$ID{visit3}?limit=100", as => 'patient1');
    my ($m) = grep { $_->{id} eq ($id // '') } @{ ($page->json // {})->{data} || [] };
    is($m && $m->{content}, $text, '... and so does the page');
    my $r2 = response(POST => "/api/visits/$ID{visit1}/cancel", token => $ADMIN,
        headers => { 'Content-Type' => 'application/json' },
        body => '{"reason":"a\u0000b"}');
    api_error_is($r2, 400, 'VALIDATION_ERROR',
                 'U+0000 in a field stored as plain text (reason): 400, never cut');
}

# --- the visit detail is by participation, as mutations and messages are -------
{
    # the doctor becomes the patient of visit 3's booking (not its doctor)
    psql(qq{UPDATE bookings SET "patientId" = '$ID{doctor}'
            WHERE id = (SELECT "bookingId" FROM visits WHERE id = '$ID{visit3}')});
    api_ok(response(GET => "/api/visits/$ID{visit3}", as => 'doctor'),
           'a DOCTOR who is the booking\'s patient sees the visit detail');
    api_ok(response(GET => "/api/messages/visit/$ID{visit3}/participants", as => 'doctor'),
           '... as the participants endpoint already let them');
    psql(qq{UPDATE bookings SET "patientId" = '$ID{patient1}'
            WHERE id = (SELECT "bookingId" FROM visits WHERE id = '$ID{visit3}')});
    api_error_is(response(GET => "/api/visits/$ID{visit3}", as => 'doctor'), 404, 'NOT_FOUND',
                 '... and not once they are no participant again');
}

# --- the second of two concurrent deletes by the sender: 404, not 403 -------
{
    my $r = response(POST => '/api/messages', as => 'nurse1',
        headers => { 'Content-Type' => 'application/json' },
        body => $JSON->encode({ visitId => $ID{visit3}, recipientId => $ID{patient1},
                                content => 'to be deleted twice' }));
    my $mid = $r->json->{data}{id};
    my $tok = token($ID{nurse1});
    api_ok(response(GET => '/api/visits', token => $tok), '(cache the nurse)');
    # the first delete holds the row and waits for audit_logs; the second
    # has already seen the row and waits for the first to commit
    my $lock = lock_table('audit_logs');
    my @c = map { Ahava::Test::HTTP::Conn->open($n->port, DELETE => "/api/messages/$mid",
                      headers => { Authorization => "Bearer $tok" }) } 1 .. 2;
    ok(poll_until(5, sub { pg_lock_waiters() >= 2 }), 'both deletes are under way');
    $lock->release;
    Ahava::Test::HTTP::wait_all(\@c, 10);
    my @st = sort map { $_->response->status } @c;
    is_deeply(\@st, [200, 404], 'one delete wins (200), the other finds nothing (404)')
        or diag(join "\n", map { $_->response->dump } @c);
}

done_ahava();
