# GET /ws (SPEC §8, issue 10): the handshake and live delivery with a real
# client (Node's `ws`, t/lib/ws-client.js) and a raw one.  Each token
# carrier (Authorization, ?token=, Sec-WebSocket-Protocol: bearer, <jwt>)
# upgrades with the RFC's 101; a bad, missing or expired token is a 401 JSON
# and no upgrade; then method (405), query arguments (400), the handshake
# headers (400, 426), `since` (400), in that order.  A message posted over
# HTTP arrives as NEW_MESSAGE, a PATCH of a visit as VISIT_STATUS_UPDATED to
# its participants but not the actor; a user with two sockets gets each
# event on both, once; a non-participant and an admin who is no participant
# get nothing.
#
# One worker: nginx publishes every event on one Redis connection and
# receives them on one subscriber, so the events reach a socket in the order
# they were published.  "Nothing came" is proven with a later event the
# socket does get: it must be the next frame.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Ahava::Test::WS;
use Ahava::Messages qw(send_message data_of json_request);
use Ahava::Visits qw(new_visit mutate new_user);
use Time::HiRes qw(time);

setup();

my $CONF = ws_config();

my $N = start_nginx($CONF, workers => 1);
ok(poll_until(10, sub { ((response(GET => '/health')->json || {})->{redis} // '') eq 'ok' }),
   'nginx is connected to Redis');

my ($P1, $P2, $N1, $N2, $D, $A) = @ID{qw(patient1 patient2 nurse1 nurse2 doctor admin)};
my ($V1, $V2) = @ID{qw(visit1 visit2)};
my $TS = qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

# the frame is {type, data, timestamp} with this type
sub frame_ok {
    my ($f, $type, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $ok = ok(ref $f eq 'HASH' && ($f->{type} // '') eq $type, "$name: a $type frame");
    unless ($ok) {
        diag('got: ' . (ref $f eq 'HASH' ? ($f->{_raw} // explain($f)) : 'nothing'));
        return 0;
    }
    is_deeply([sort grep { !/^_/ } keys %$f], [qw(data timestamp type)], "$name: keys {type, data, timestamp}");
    like($f->{timestamp} // '', $TS, "$name: timestamp ISO-8601 UTC with ms");
    return 1;
}

# a socket's next frame is of this type (and what it is)
sub next_is {
    my ($c, $type, $name, $timeout) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $f = $c->next_message($timeout // 5);
    frame_ok($f, $type, $name);
    return $f;
}

# --- every token carrier, with Node's ws ---------------------------------------------------------
my %sock;
for my $via (qw(header query protocol)) {
    my $c = ws_connect(as => 'patient1', via => $via, name => "patient1/$via");
    ok($c->opened, "token in the $via: upgraded")
        or diag(explain($c->response // [$c->errors]));
    is($c->status, 101, "$via: 101 Switching Protocols");
    is(lc($c->header('upgrade') // ''), 'websocket', "$via: Upgrade: websocket");
    like($c->header('connection') // '', qr/\bupgrade\b/i, "$via: Connection: upgrade");
    ok(defined $c->header('sec-websocket-accept'), "$via: Sec-WebSocket-Accept (checked by ws)");
    ok(!defined $c->header('sec-websocket-extensions'),
       "$via: no extension accepted (ws offered permessage-deflate)");
    if ($via eq 'protocol') {
        is($c->header('sec-websocket-protocol'), 'bearer', "$via: the answer selects the subprotocol 'bearer'");
        is($c->protocol, 'bearer', "$via: ws sees the subprotocol 'bearer'");
    } else {
        ok(!defined $c->header('sec-websocket-protocol'), "$via: no subprotocol in the answer");
    }
    my ($pong, @before) = $c->ping_roundtrip(5);
    frame_ok($pong, 'PONG', "$via: PING answered");
    is_deeply($pong && $pong->{data}, {}, "$via: PONG data {}");
    is(scalar @before, 0, "$via: the server sent nothing after the upgrade but the PONG")
        or diag(explain [map { $_->{_raw} } @before]);
    $sock{$via} = $c;
}

# the raw handshake: Sec-WebSocket-Accept computed here, nothing after the 101
{
    my $r = ws_raw(as => 'patient1');
    is($r->status, 101, 'raw handshake: 101');
    is($r->header('sec-websocket-accept'), ws_accept_of($r->key),
       'raw handshake: Sec-WebSocket-Accept = base64(SHA-1(key + GUID))');
    is($r->buffered, '', 'raw handshake: no byte after the 101 answer');
    my ($pong, @before) = $r->ping_roundtrip(5);
    ok($pong && !@before, 'raw: the first frame from the server is the PONG of our PING');
    $r->send_close(1000);
    my ($close) = $r->expect_close(5, no_reply => 1);
    is($close && $close->{code}, 1000, 'raw: our close 1000 is echoed');
    ok($r->wait_eof(5), 'raw: then the server closes the connection');

    # Firefox's "Connection: keep-alive, Upgrade", a capitalised "WebSocket"
    my $ff = ws_raw(as => 'nurse1', headers => { Connection => 'keep-alive, Upgrade',
                                                 Upgrade => 'WebSocket' });
    is($ff->status, 101, '"Connection: keep-alive, Upgrade" and "Upgrade: WebSocket": 101');
    $ff->close_socket;
}

# --- bad tokens: 401 JSON, no upgrade ------------------------------------------------------------
# the user's channel gets no subscriber: no session was made
sub refused_ok {
    my ($r, $status, $code, $name, %o) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    api_error_is($r->response, $status, $code, "$name: $status $code");
    ok(!defined $r->header('sec-websocket-accept') && lc($r->header('upgrade') // '') ne 'websocket',
       "$name: no upgrade");
    if ($o{user}) {
        is(redis_numsub($o{user}), 0, "$name: no subscription for the user");
    }
}

my $EXPIRED = token($P2, exp => -60);
my $BADSIG = token($P2, secret => 'not-the-secret');
my $INACTIVE = new_user(role => 'PATIENT', active => 0);
for my $via (qw(header query protocol)) {
    refused_ok(ws_raw(token => $BADSIG, via => $via), 401, 'TOKEN_INVALID', "bad signature in the $via", user => $P2);
    refused_ok(ws_raw(token => $EXPIRED, via => $via), 401, 'TOKEN_EXPIRED', "expired token in the $via", user => $P2);
    refused_ok(ws_raw(token => 'not-a-jwt', via => $via), 401, 'TOKEN_INVALID', "garbage token in the $via");
    refused_ok(ws_raw(token => token('cnosuchuser00000000000001'), via => $via), 401, 'TOKEN_INVALID',
               "token of an unknown user in the $via");
    refused_ok(ws_raw(token => token($INACTIVE), via => $via), 401, 'TOKEN_INVALID',
               "token of an inactive user in the $via", user => $INACTIVE);
}
refused_ok(ws_raw(), 401, 'TOKEN_MISSING', 'no token at all');
refused_ok(ws_raw(headers => { 'Sec-WebSocket-Protocol' => 'chat, superchat' }), 401, 'TOKEN_MISSING',
           'a subprotocol list without bearer: no token');
refused_ok(ws_raw(headers => { Authorization => 'Basic dXNlcjpwYXNz' }), 401, 'TOKEN_MISSING',
           'Authorization: Basic: no token');

# and with Node's ws: the handshake fails with the 401 and its JSON
for my $case (['header', $BADSIG, 'TOKEN_INVALID'], ['query', $EXPIRED, 'TOKEN_EXPIRED'],
              ['protocol', $BADSIG, 'TOKEN_INVALID'], [undef, undef, 'TOKEN_MISSING'])
{
    my ($via, $tok, $code) = @$case;
    my $c = ws_connect(defined $tok ? (token => $tok, via => $via) : (), name => 'bad');
    my $name = defined $via ? "ws, bad token in the $via" : 'ws, no token';
    ok(!$c->opened, "$name: not upgraded");
    is($c->status, 401, "$name: 401");
    my $j = $c->response && $c->response->{json};
    is(ref $j eq 'HASH' ? $j->{code} : undef, $code, "$name: JSON code $code")
        or diag(explain $c->response);
    ok(ref $j eq 'HASH' && JSON::PP::is_bool($j->{success}) && !$j->{success}, "$name: success false");
}

# --- the order of the checks, and each check -----------------------------------------------------------
my $GOOD = token($P1);
refused_ok(ws_raw(method => 'POST'), 401, 'TOKEN_MISSING', 'POST without a token: the token first');
refused_ok(ws_raw(version => 8), 401, 'TOKEN_MISSING', 'version 8 without a token: the token first');
refused_ok(ws_raw(query => [foo => 1]), 401, 'TOKEN_MISSING', 'an unknown argument without a token: the token first');

refused_ok(ws_raw(token => $GOOD, method => 'POST', body => ''), 405, 'METHOD_NOT_ALLOWED', 'POST /ws');
refused_ok(ws_raw(token => $GOOD, method => 'PUT', body => ''), 405, 'METHOD_NOT_ALLOWED', 'PUT /ws');
refused_ok(ws_raw(token => $GOOD, method => 'POST', query => [foo => 1], body => ''), 405,
           'METHOD_NOT_ALLOWED', 'POST with an unknown argument: the method before the arguments');

refused_ok(ws_raw(token => $GOOD, query => [foo => 1]), 400, 'VALIDATION_ERROR', 'an unknown argument');
refused_ok(ws_raw(token => $GOOD, query => 'since'), 400, 'VALIDATION_ERROR', '"since" without a value');
refused_ok(ws_raw(token => $GOOD, via => 'query', query => [token => $GOOD]), 400, 'VALIDATION_ERROR',
           'token given twice in the query');
refused_ok(ws_raw(token => $GOOD, query => [foo => 1], version => 8), 400, 'VALIDATION_ERROR',
           'an unknown argument and version 8: the arguments before the headers');

{
    my $r = ws_raw(token => $GOOD, version => 8);
    is($r->status, 426, 'Sec-WebSocket-Version: 8: 426 Upgrade Required');
    is($r->header('sec-websocket-version'), '13', '... with Sec-WebSocket-Version: 13');
    unlike($r->body // '', qr/<html/i, '... and no HTML page');
    ok(!defined $r->header('sec-websocket-accept'), '... no upgrade');
    $r = ws_raw(token => $GOOD, version => 8, query => [since => 'cnosuchmessage00000000001']);
    is($r->status, 426, 'version 8 and an unknown since: 426 (the headers before since)');
}
for my $case (['no Sec-WebSocket-Key', { 'Sec-WebSocket-Key' => undef }],
              ['a key of 15 bytes', { 'Sec-WebSocket-Key' => 'AAAAAAAAAAAAAAAAAAAA' }],
              ['a key that is no base64', { 'Sec-WebSocket-Key' => '!!!!!!!!!!!!!!!!!!!!!!==' }],
              ['a key of 17 bytes', { 'Sec-WebSocket-Key' => 'AAAAAAAAAAAAAAAAAAAAAAA=' }],
              ['no Upgrade header', { Upgrade => undef }],
              ['Upgrade: h2c', { Upgrade => 'h2c' }],
              ['Connection: keep-alive (no upgrade)', { Connection => 'keep-alive' }],
              ['no Connection header', { Connection => undef }])
{
    my ($name, $h) = @$case;
    my $r = ws_raw(token => $GOOD, headers => $h);
    is($r->status, 400, "$name: 400");
    ok($r->response->is_json && ref $r->json eq 'HASH' && JSON::PP::is_bool($r->json->{success})
       && !$r->json->{success}, "$name: a JSON error") or diag($r->response->dump);
    ok(!defined $r->header('sec-websocket-accept'), "$name: no upgrade");
}
refused_ok(ws_raw(token => $GOOD, query => [since => 'cnosuchmessage00000000001'], headers => { Upgrade => undef }),
           400, 'VALIDATION_ERROR', 'no Upgrade and an unknown since: still a 400');
# nothing runs after an early answer: the since statement never ran for
# the refusals that come before it
{
    my ($mine) = Ahava::Messages::insert_messages(
        { visit => $V1, from => 'nurse1', to => 'patient1', content => 'since, refused' });
    my $since = [since => $mine];
    my $counted = reset_statements();
    refused_ok(ws_raw(query => $since), 401, 'TOKEN_MISSING', 'since, no token: 401');
    refused_ok(ws_raw(token => $GOOD, query => $since, headers => { Connection => 'keep-alive' }),
               400, 'VALIDATION_ERROR', 'since, no Connection: Upgrade: 400');
    is(ws_raw(token => $GOOD, query => $since, version => 8)->status, 426, 'since, version 8: 426');
    is(response(GET => '/health')->status, 200, 'since refusals: (barrier)');
    SKIP: {
        skip 'no pg_stat_statements', 1 unless $counted;
        is(statement_calls(like => '%FROM messages m WHERE m.id%'), 0,
           'since refusals: the since statement never ran');
    }
}

# since: a message the caller sent or received, else 400
{
    my ($other) = Ahava::Messages::insert_messages(
        { visit => $V2, from => 'nurse2', to => 'patient2', content => 'not for patient1' });
    refused_ok(ws_raw(token => $GOOD, query => [since => 'cnosuchmessage00000000001']), 400, 'VALIDATION_ERROR',
               'since = an unknown message id');
    refused_ok(ws_raw(token => $GOOD, query => [since => $other]), 400, 'VALIDATION_ERROR',
               "since = a message between two other users");
    refused_ok(ws_raw(token => $GOOD, query => [since => 'bad id!']), 400, 'VALIDATION_ERROR',
               'since = a malformed id');
    refused_ok(ws_raw(token => $GOOD, query => [since => '']), 400, 'VALIDATION_ERROR', 'since = empty');
    my ($recv, $sent) = Ahava::Messages::insert_messages(
        { visit => $V1, from => 'nurse1', to => 'patient1', content => 'to patient1' },
        { visit => $V1, from => 'patient1', to => 'nurse1', content => 'from patient1' });
    for my $case ([$recv, 'received'], [$sent, 'sent']) {
        my $r = ws_raw(token => $GOOD, query => [since => $case->[0]]);
        is($r->status, 101, "since = a message patient1 $case->[1]: 101");
        $r->close_socket;
    }
    my $r = ws_raw(token => token($N2), query => [since => $other]);
    is($r->status, 101, 'since = a message nurse2 sent: 101');
    $r->close_socket;
}
# a valid handshake after all those refusals
{
    my $r = ws_raw(token => $GOOD);
    is($r->status, 101, 'after the refusals a good handshake still upgrades');
    my ($pong, @before) = $r->ping_roundtrip(5);
    ok($pong && !@before, '... and its first frame is our PONG');
    $r->close_socket;
}
ok(poll_until(5, sub { redis_numsub($P2) == 0 && redis_numsub($INACTIVE) == 0 }),
   'no subscription was left by a refused handshake');

# --- events ---------------------------------------------------------------------------------------------
# patient1 has two sockets (the header and query ones above; the protocol one closes)
$sock{protocol}->close(1000);
is(($sock{protocol}->wait_close(5) || {})->{code}, 1000, 'patient1/protocol: close 1000 echoed');
my ($P1a, $P1b) = @sock{qw(header query)};
my $NUR = ws_connect(as => 'nurse1', via => 'protocol', name => 'nurse1');
my $DOC = ws_connect(as => 'doctor', name => 'doctor');
my $NU2 = ws_connect(as => 'nurse2', via => 'query', name => 'nurse2');
my $ADM = ws_connect(as => 'admin', name => 'admin');
my $PA2 = ws_connect(as => 'patient2', name => 'patient2');
ok($_->opened, $_->name . ': connected') for $NUR, $DOC, $NU2, $ADM, $PA2;
# every socket is subscribed before the first event is published
for my $c ($NUR, $DOC, $NU2, $ADM, $PA2) {
    my ($pong) = $c->ping_roundtrip(5);
    ok($pong, $c->name . ': PING answered');
}
ok(poll_until(5, sub { redis_numsub($P1) == 1 && redis_numsub($N1) == 1 && redis_numsub($A) == 1 }),
   'one subscription per user on the one worker (patient1 has two sockets)')
    or diag("numsub patient1 " . redis_numsub($P1));

# NEW_MESSAGE over HTTP
my $TEXT = "Leaving now \x{2014} see you at 10 \x{1F697}";
my $r = send_message('nurse1', $V1, 'patient1', $TEXT);
api_ok($r, 'nurse1 posts a message to patient1: 201', status => 201);
my $msg = data_of($r) || {};
for my $c ($P1a, $P1b) {
    my $f = next_is($c, 'NEW_MESSAGE', $c->name);
    is_deeply($f && $f->{data}, $msg, $c->name . ': data = the message as the 201 returned it');
    is($f && $f->{data}{content}, $TEXT, $c->name . ': content decrypted, UTF-8 intact');
}
{
    my $f = next_is($NUR, 'NEW_MESSAGE', "nurse1 (the sender's other session)");
    is($f && $f->{data}{id}, $msg->{id}, "nurse1: the same message");
}

# VISIT_STATUS_UPDATED: the nurse's PATCH reaches the patient (both sockets)
# and the doctor, not the nurse; then the admin's reaches all three
my $V = new_visit(status => 'SCHEDULED');
$r = mutate('status', $V, as => 'nurse1', body => { status => 'EN_ROUTE' });
api_ok($r, 'nurse1 PATCHes the visit to EN_ROUTE');
for my $c ($P1a, $P1b, $DOC) {
    my $f = next_is($c, 'VISIT_STATUS_UPDATED', $c->name . ' (the next frame: no second NEW_MESSAGE, nothing else)');
    is_deeply($f && $f->{data}, { visitId => $V, status => 'EN_ROUTE', previousStatus => 'SCHEDULED',
                                  updatedBy => $N1 }, $c->name . ': data {visitId, status, previousStatus, updatedBy}');
}
$r = mutate('status', $V, as => 'admin', body => { status => 'ARRIVED' });
api_ok($r, 'the admin PATCHes the visit to ARRIVED');
for my $c ($P1a, $P1b, $DOC, $NUR) {
    my $f = next_is($c, 'VISIT_STATUS_UPDATED', $c->name . ": the admin's change"
                    . ($c == $NUR ? " (the nurse's next frame: she did not get her own)" : ''));
    is($f && $f->{data}{status}, 'ARRIVED', $c->name . ': status ARRIVED');
    is($f && $f->{data}{updatedBy}, $A, $c->name . ': updatedBy the admin');
}

# the non-participants: their next frames are later events of their own
$r = send_message('admin', $V2, 'patient2', 'barrier one');
api_ok($r, 'barrier: the admin writes to patient2 on visit 2', status => 201);
for my $c ($ADM, $PA2) {
    my $f = next_is($c, 'NEW_MESSAGE', $c->name . ': the next frame is the barrier (nothing of visit 1 before)');
    is($f && $f->{data}{content}, 'barrier one', $c->name . ': the barrier message');
}
$r = send_message('patient2', $V2, 'nurse2', 'barrier two');
api_ok($r, 'barrier: patient2 writes to nurse2', status => 201);
for my $c ($NU2, $PA2) {
    my $f = next_is($c, 'NEW_MESSAGE', $c->name . ': the next frame is the second barrier');
    is($f && $f->{data}{content}, 'barrier two', $c->name . ': the second barrier message');
}
# and a last one for the participants: exactly once each
$r = send_message('doctor', $V1, 'patient1', 'barrier three');
api_ok($r, 'barrier: the doctor writes to patient1', status => 201);
for my $c ($P1a, $P1b, $DOC) {
    my $f = next_is($c, 'NEW_MESSAGE', $c->name . ': the next frame is the third barrier');
    is($f && $f->{data}{content}, 'barrier three', $c->name . ': the third barrier message');
}
for my $c ($P1a, $P1b, $NUR, $DOC, $NU2, $ADM, $PA2) {
    my ($pong, @before) = $c->ping_roundtrip(5);
    ok($pong && !@before, $c->name . ': nothing else arrived (PING round trip)')
        or diag(explain [map { $_->{_raw} } @before]);
    ok(!$c->closed, $c->name . ': still open');
}

# closing: the close handshake with each code
for my $case ([$P1a, 1000], [$P1b, 4000], [$NUR, 1001], [$DOC, 1000], [$NU2, 1000], [$ADM, 1000], [$PA2, 1000]) {
    my ($c, $code) = @$case;
    $c->close($code);
    my $cl = $c->wait_close(5);
    is($cl && $cl->{code}, $code, $c->name . ": close $code echoed");
}
ok(poll_until(5, sub { redis_numsub($P1) == 0 && redis_numsub($N1) == 0 && redis_numsub($A) == 0 }),
   'every subscription is gone with the last socket');

done_ahava();
