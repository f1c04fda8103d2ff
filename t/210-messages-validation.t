# /api/messages input validation (SPEC §4, §6): content length in code
# points, UTF-8, types, unknown fields, ids, recipients, attachments,
# messageIds, query arguments, Content-Type, body size and non-JSON bodies.
# Every refusal is the SPEC §4 JSON and stores nothing.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Ahava::Messages;

setup();
start_messages_nginx();

my ($V1, $V3) = @ID{qw(visit1 visit3)};
my $P1 = $ID{patient1};
my $EMOJI = "\x{1F600}";                       # 4 bytes in UTF-8

sub total_messages { psql_value('SELECT count(*) FROM messages') }

# a send that must be refused with 400 VALIDATION_ERROR naming $field
sub refused {
    my ($r, $name, $field) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $ok = api_error_is($r, 400, 'VALIDATION_ERROR', "$name: 400 VALIDATION_ERROR");
    if (defined $field) {
        ok((grep { $_ eq $field } details_of($r)), "$name: details name \"$field\"")
            or diag($r->raw);
    } else {
        my $j = $r->json;
        ok(ref $j eq 'HASH' && ref $j->{details} eq 'ARRAY' && @{ $j->{details} },
           "$name: details given") or diag($r->raw);
    }
    return $ok;
}

my $base = { visitId => $V1, recipientId => $P1, content => 'hello' };
sub with { my %o = @_; my %b = (%$base, %o); delete @b{ grep { !defined $o{$_} && exists $o{$_} } keys %o }; \%b }
sub post { json_request(POST => '/api/messages', 'nurse1', @_) }

my $before = total_messages();

# --- content: 1..5000 Unicode code points -------------------------------------------
{
    my $r = post(with(content => $EMOJI x 5000));
    api_ok($r, '5000 emoji (20000 bytes, 5000 code points): 201', status => 201);
    my $c = (data_of($r) || {})->{content} // '';
    is(length $c, 5000, '... 5000 code points back');
    ok($c eq $EMOJI x 5000, '... the same text back');

    refused(post(with(content => $EMOJI x 5001)), '5001 emoji', 'content');
    api_ok(post(with(content => 'a' x 5000)), '5000 ASCII characters: 201', status => 201);
    refused(post(with(content => 'a' x 5001)), '5001 ASCII characters', 'content');
    refused(post(with(content => '')), 'content ""', 'content');
    api_ok(post(with(content => "\x{e9}" x 5000)), '5000 two-byte characters (10000 bytes): 201', status => 201);
    api_ok(post(with(content => 'x')), 'one character: 201', status => 201);

    # 5000 code points written as JSON escapes (surrogate pairs): 60000 bytes
    my $esc = '{"visitId":"' . $V1 . '","recipientId":"' . $P1 . '","content":"'
            . ('\ud83d\ude00' x 5000) . '"}';
    $r = post($esc);
    api_ok($r, '5000 emoji as \uXXXX surrogate pairs (60 KB of JSON): 201', status => 201);
    ok(((data_of($r) || {})->{content} // '') eq $EMOJI x 5000, '... decoded to 5000 emoji');

    refused(post(with(content => undef)), 'content absent', 'content');
    refused(post(with(content => 42)), 'content a number', 'content');
    refused(post({ %$base, content => JSON::PP::null }), 'content null', 'content');
    refused(post({ %$base, content => ['a'] }), 'content an array', 'content');
}
my $after_ok = total_messages();
is($after_ok, $before + 5, 'the five accepted messages are stored');

# --- UTF-8 -------------------------------------------------------------------------------
{
    my $pre = qq({"visitId":"$V1","recipientId":"$P1","content":");
    for my $case (['a raw \xff byte', "a\xffb"], ['a raw \xc0\xaf overlong', "a\xc0\xafb"],
                  ['a truncated sequence', "a\xe2\x82"], ['a raw UTF-16 surrogate', "a\xed\xa0\x80b"],
                  ['a lone \ud800 escape', 'a\ud800b'])
    {
        refused(post($pre . $case->[1] . '"}'), "content with $case->[0]");
    }
    refused(post(qq({"visitId":"$V1","recipientId":"$P1","content":"ok","\xff":1})),
            'a field name with a \xff byte');
}

# --- type -------------------------------------------------------------------------------
refused(post(with(type => 'SYSTEM')), 'type SYSTEM (never from a client)', 'type');
refused(post(with(type => 'text')), 'type "text" (case matters)', 'type');
refused(post(with(type => 'VIDEO')), 'type VIDEO', 'type');
refused(post(with(type => 1)), 'type a number', 'type');
for my $t (qw(TEXT IMAGE FILE)) {
    my $r = post(with(type => $t));
    api_ok($r, "type $t: 201", status => 201);
    is((data_of($r) || {})->{type}, $t, "... stored as $t");
}
{
    my $r = post(with(content => 'no type'));
    is((data_of($r) || {})->{type}, 'TEXT', 'no type: TEXT');
}
my $type_null_stored = 0;
{
    # An optional field given as null is treated as absent elsewhere
    # (attachmentUrl: null is accepted); type: null must not be a 500.
    my $r = post({ %$base, type => JSON::PP::null });
    $type_null_stored = $r->status == 201 ? 1 : 0;
    ok($r->status == 201 || $r->status == 400,
       'type null: 201 (TEXT) or 400, not a 500') or diag($r->dump);
}

# --- unknown fields ---------------------------------------------------------------------
refused(post(with(foo => 'bar')), 'an unknown field', 'foo');
refused(post(with(senderId => $ID{patient1})), 'senderId (not a client field)', 'senderId');
refused(post(with(isRead => JSON::PP::true)), 'isRead (not a client field)', 'isRead');
refused(post(with(id => 'cmine0000000000000000001')), 'id (not a client field)', 'id');
refused(post(qq({"visitId":"$V1","recipientId":"$P1","content":"a","content":"b"})),
        'a duplicated key');

# --- ids -----------------------------------------------------------------------------------
for my $f (qw(visitId recipientId)) {
    for my $bad (['bad chars "a.b"', 'a.b'], ['a space', 'a b'], ['a quote', "x'or'1"], ['a slash', 'a/b'],
                 ['65 characters', 'c' x 65], ['empty', ''], ['non-ASCII', "caf\x{e9}"])
    {
        refused(post(with($f => $bad->[1])), "$f $bad->[0]", $f);
    }
    refused(post(with($f => 12345)), "$f a number", $f);
    refused(post(with($f => undef)), "$f absent", $f);
    refused(post({ %$base, $f => JSON::PP::null }), "$f null", $f);
}
api_error_is(post(with(visitId => 'c' x 64)), 404, 'NOT_FOUND', 'a well-formed 64-character visitId that does not exist: 404');

# --- recipient ---------------------------------------------------------------------------
refused(post(with(recipientId => $ID{nurse2})), 'recipient not a participant of the visit', 'recipientId');
refused(post(with(recipientId => $ID{admin})), 'recipient an admin (not a participant)', 'recipientId');
refused(post(with(recipientId => $ID{nurse1})), 'recipient = the sender', 'recipientId');
refused(post(with(recipientId => 'cnosuchuser00000000000001')), 'recipient an unknown user', 'recipientId');
refused(post(with(visitId => $V3, recipientId => $ID{doctor})), 'recipient the doctor of another visit (visit 3 has none)', 'recipientId');
refused(json_request(POST => '/api/messages', 'admin', with(recipientId => $ID{admin})),
        'an admin writing to itself', 'recipientId');

# --- attachments (SPEC §6: an upload owned by the sender; t/400 has the accepted ones) ---------
for my $case ([attachmentUrl => '/uploads/images/1700000000000-0123456789abcdef01234567.png'],
              [attachmentUrl => 'https://evil.example/x.exe'],
              [attachmentType => 'image/png'],
              [attachmentType => 'application/pdf'])
{
    my ($f, $v) = @$case;
    my $r = post(with(type => 'IMAGE', $f => $v));
    refused($r, "$f \"$v\"");
    my $j = $r->json || {};
    my @msgs = map { $_->{message} // '' } @{ ref $j->{details} eq 'ARRAY' ? $j->{details} : [] };
    ok((grep { /upload|attachment/i } @msgs), "$f \"$v\": the details say why")
        or diag($r->raw);
    if ($f eq 'attachmentType') {
        ok((grep { $_ eq 'attachmentType' } details_of($r)), "$f alone: the detail names $f")
            or diag($r->raw);
    }
}
refused(post(with(attachmentUrl => '/uploads/images/a.png', attachmentType => 'image/png')),
        'attachmentUrl and attachmentType together');
refused(post(with(attachmentUrl => 42)), 'attachmentUrl a number', 'attachmentUrl');

is(total_messages(), $after_ok + 4 + $type_null_stored,
   'nothing stored by any refused send (only the typed sends)');

# --- POST /api/messages/read {messageIds} ---------------------------------------------------
sub mark { json_request(POST => '/api/messages/read', 'patient1', @_) }
{
    my @ids = map { sprintf('cnosuchmsg%015d', $_) } 1 .. 101;
    refused(mark({ messageIds => [] }), 'messageIds []', 'messageIds');
    refused(mark({ messageIds => [@ids] }), 'messageIds with 101 ids', 'messageIds');
    my $r = mark({ messageIds => [@ids[0 .. 99]] });
    api_ok($r, 'messageIds with 100 ids: 200');
    is((data_of($r) || {})->{updated}, 0, '... updated 0 (none exist)');
    refused(mark({ messageIds => [$ID{message3}, $ID{message3}] }), 'messageIds with a duplicate', 'messageIds');
    refused(mark({ messageIds => [$ID{message3}, 42] }), 'messageIds with a number', 'messageIds');
    refused(mark({ messageIds => [JSON::PP::null] }), 'messageIds with null', 'messageIds');
    refused(mark({ messageIds => [{ id => $ID{message3} }] }), 'messageIds with an object', 'messageIds');
    refused(mark({ messageIds => [[$ID{message3}]] }), 'messageIds with an array', 'messageIds');
    refused(mark({ messageIds => [JSON::PP::true] }), 'messageIds with a boolean', 'messageIds');
    refused(mark({ messageIds => ['bad.id'] }), 'messageIds with a malformed id', 'messageIds');
    refused(mark({ messageIds => ['c' x 65] }), 'messageIds with a 65-character id', 'messageIds');
    refused(mark({ messageIds => [''] }), 'messageIds with an empty id', 'messageIds');
    refused(mark({ messageIds => $ID{message3} }), 'messageIds a string', 'messageIds');
    refused(mark({}), 'messageIds absent', 'messageIds');
    refused(mark({ messageIds => [$ID{message3}], all => JSON::PP::true }), 'an unknown field beside messageIds', 'all');
    is(message_row($ID{message3})->{isRead}, 'false', 'no refused request marked anything');
}

# --- query arguments of GET /api/messages/visit/:id ---------------------------------------
sub list_q { response(GET => "/api/messages/visit/$V3?$_[0]", as => 'nurse1') }
for my $q ('limit=0', 'limit=101', 'limit=-1', 'limit=abc', 'limit=1.5', 'limit=', 'limit=1e2',
           'limit=99999999999999999999', 'offset=-1', 'offset=abc', 'offset=1.0', 'offset=',
           'unreadOnly=yes', 'unreadOnly=1', 'unreadOnly=TRUE', 'unreadOnly=', 'unreadOnly=0')
{
    my ($f) = $q =~ /^(\w+)/;
    refused(list_q($q), "?$q", $f);
}
for my $q ('limit=1', 'limit=100', 'offset=0', 'offset=1000', 'unreadOnly=true', 'unreadOnly=false',
           'limit=5&offset=1&unreadOnly=true')
{
    api_ok(list_q($q), "?$q: 200");
}
{
    my $r = list_q('limit=100&offset=1');
    is_deeply($r->json->{meta}, { limit => 100, offset => 1, total => 3 }, '?limit=100&offset=1: meta echoes them');
}

# --- malformed ids in paths: 404 -----------------------------------------------------------
api_error_is(response(GET => '/api/messages/visit/bad.id', as => 'admin'), 404, 'NOT_FOUND', 'GET visit/bad.id: 404');
api_error_is(response(GET => '/api/messages/visit/' . ('c' x 65), as => 'admin'), 404, 'NOT_FOUND', 'GET visit/<65 chars>: 404');
api_error_is(response(GET => '/api/messages/visit/bad.id/participants', as => 'admin'), 404, 'NOT_FOUND',
             'GET visit/bad.id/participants: 404');
api_error_is(response(DELETE => '/api/messages/bad.id', as => 'admin'), 404, 'NOT_FOUND', 'DELETE bad.id: 404');
api_error_is(response(DELETE => '/api/messages/' . ('c' x 65), as => 'admin'), 404, 'NOT_FOUND', 'DELETE <65 chars>: 404');

# --- Content-Type -----------------------------------------------------------------------------
{
    my $json = $JSONC->encode(with());
    for my $ct ('text/plain', 'application/x-www-form-urlencoded', 'application/jsonx',
                'multipart/form-data; boundary=x', 'text/json')
    {
        api_error_is(json_request(POST => '/api/messages', 'nurse1', $json, headers => { 'Content-Type' => $ct }),
                     415, 'UNSUPPORTED_MEDIA_TYPE', "Content-Type $ct: 415");
    }
    api_error_is(response(POST => '/api/messages', as => 'nurse1', body => $json), 415,
                 'UNSUPPORTED_MEDIA_TYPE', 'no Content-Type: 415');
    api_error_is(json_request(POST => '/api/messages/read', 'patient1', '{"messageIds":["x"]}',
                              headers => { 'Content-Type' => 'text/plain' }),
                 415, 'UNSUPPORTED_MEDIA_TYPE', 'read with Content-Type text/plain: 415');
    api_ok(json_request(POST => '/api/messages', 'nurse1', $json,
                        headers => { 'Content-Type' => 'application/json; charset=utf-8' }),
           'application/json; charset=utf-8: 201', status => 201);
    api_ok(json_request(POST => '/api/messages', 'nurse1', $json,
                        headers => { 'Content-Type' => 'Application/JSON' }),
           'Application/JSON (case-insensitive): 201', status => 201);
}

# --- size: at most 64 KiB -----------------------------------------------------------------------
{
    my $json = $JSONC->encode(with(content => 'padded'));
    my $exact = $json . (' ' x (65536 - length $json));      # trailing whitespace is valid JSON
    is(length $exact, 65536, 'a body of exactly 64 KiB');
    api_ok(post($exact), '64 KiB (whitespace-padded JSON): 201', status => 201);
    my $n = total_messages();
    api_error_is(post($exact . ' '), 413, 'PAYLOAD_TOO_LARGE', '64 KiB + 1: 413 PAYLOAD_TOO_LARGE');
    api_error_is(post(with(content => 'x' x 70000)), 413, 'PAYLOAD_TOO_LARGE', 'a 70 KB message: 413');
    api_error_is(post('[' . ('1,' x 600000) . '1]'), 413, 'PAYLOAD_TOO_LARGE', 'a 1.2 MB body: 413');
    my $big = $JSONC->encode(with(content => 'y' x 70000));
    my $chunked = sprintf("%x\r\n%s\r\n0\r\n\r\n", length $big, $big);
    api_error_is(json_request(POST => '/api/messages', 'nurse1', $chunked,
                              headers => { 'Transfer-Encoding' => 'chunked' }),
                 413, 'PAYLOAD_TOO_LARGE', 'a 70 KB chunked body: 413');
    my $r = json_request(POST => '/api/messages/read', 'patient1',
                         $JSONC->encode({ messageIds => [$ID{message3}] }) . (' ' x 70000));
    api_error_is($r, 413, 'PAYLOAD_TOO_LARGE', 'read with a 70 KB body: 413');
    is(total_messages(), $n, 'nothing stored by the 413s');
}

# --- not JSON / not an object -----------------------------------------------------------------
for my $case (['plain text', 'hello'], ['truncated JSON', '{"visitId":'],
              ['a JSON string', '"content"'], ['JSON null', 'null'], ['a number', '42'],
              ['single quotes', "{'content':'x'}"], ['a trailing comma', '{"content":"x",}'],
              ['NaN', '{"content":NaN}'], ['two objects', '{}{}'], ['a BOM', "\xef\xbb\xbf{}"])
{
    refused(post($case->[1]), "a body that is $case->[0]");
}
{
    # SPEC §4: a 400 carries "details" (field-level messages)
    my $r = post('[1,2]');
    api_error_is($r, 400, 'VALIDATION_ERROR', 'a body that is a JSON array: 400 VALIDATION_ERROR');
    ok(ref(($r->json || {})->{details}) eq 'ARRAY', 'a body that is a JSON array: details given')
        or diag($r->raw);
}
refused(post(''), 'an empty body (required fields missing)', 'content');
refused(post('{}'), 'an empty object', 'visitId');
refused(mark('{"messageIds":'), 'read with truncated JSON');

error_log_unlike(qr/\[(?:alert|crit|emerg)\]/, 'no alert in the error log');
is(response(GET => '/health')->status, 200, 'nginx is still healthy');

done_ahava();
