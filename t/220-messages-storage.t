# Message content at rest (SPEC §10, §6): nginx stores AES-256-GCM
# ciphertext in the v2 form, never the plaintext; Node's crypto reads what
# nginx wrote and nginx reads what Node wrote (v2 and the legacy hex form);
# a value that fails authentication comes back as content null +
# "contentError":"DECRYPTION_FAILED" with the rest of the page intact, and
# is logged (without the content); a rotated key still reads old rows.
use strict;
use warnings;
use Test::More;
use MIME::Base64 qw(decode_base64);
use Ahava::Test;
use Ahava::Messages;

setup();
my $main = start_messages_nginx();

my $V1 = $ID{visit1};
my $B64 = qr{[A-Za-z0-9+/]+={0,2}};

sub list_visit {
    my ($as, $visit, $q) = @_;
    my $r = response(GET => "/api/messages/visit/$visit" . ($q ? "?$q" : ''), as => $as);
    return ($r, { map { $_->{id} => $_ } @{ data_of($r) || [] } });
}

# --- what nginx stores --------------------------------------------------------------
my $PLAIN = "Gate code 4512 \x{2014} caf\x{e9}, \x{1F48A} twice daily; Ngiyabonga!";
my $r = send_message('nurse1', $V1, 'patient1', $PLAIN);
api_ok($r, 'POST a message: 201', status => 201) or BAIL_OUT('cannot send');
my $id = data_of($r)->{id};
is(data_of($r)->{content}, $PLAIN, 'the 201 carries the plaintext');

my $stored = psql_value(qq{SELECT content FROM messages WHERE id = '$id'});
like($stored, qr/^v2:/, "the stored content starts with 'v2:'");
like($stored, qr/^v2:($B64):($B64):($B64)$/, '... v2:<iv b64>:<tag b64>:<ct b64>');
my ($iv, $tag, $ct) = $stored =~ /^v2:([^:]*):([^:]*):([^:]*)$/;
is(length(decode_base64($iv // '')), 12, '... a 12-byte IV');
is(length(decode_base64($tag // '')), 16, '... a 16-byte tag');
require Encode;
is(length(decode_base64($ct // '')), length(Encode::encode('UTF-8', $PLAIN)),
   '... ciphertext as long as the UTF-8 plaintext (GCM, no padding)');
my $utf8 = Encode::encode('UTF-8', $PLAIN);
ok(index($stored, $_) < 0, "... the stored text does not contain '$_'")
    for 'Gate code', '4512', 'Ngiyabonga';
ok(index($stored, $PLAIN) < 0, '... nor the whole plaintext');
{
    my $raw = psql(qq{SELECT content FROM messages WHERE id = '$id'}, raw => 1)->[0][0];
    ok(index($raw, $utf8) < 0 && index($raw, 'Gate') < 0, '... nor (as bytes) the UTF-8 plaintext');
    my $dump = join '', map { $_->[0] // '' }
        @{ psql(q{SELECT row_to_json(m)::text FROM messages m}, raw => 1) };
    ok(index($dump, 'Gate code') < 0, 'no column of any message row holds the plaintext');
}

# Node's crypto decrypts what nginx wrote
my ($node_plain) = node_decrypt([$stored]);
is($node_plain, $PLAIN, "Node's aes-256-gcm decrypts nginx's ciphertext to the plaintext");
{
    my ($wrong) = node_decrypt([$stored], key => 'AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=');
    ok(!defined $wrong, '... and fails under another key (authenticated)');
}

# the same text twice: a fresh IV each time
{
    my $a = data_of(send_message('patient1', $V1, 'nurse1', 'same text'))->{id};
    my $b = data_of(send_message('patient1', $V1, 'nurse1', 'same text'))->{id};
    my ($ca, $cb) = map { psql_value(qq{SELECT content FROM messages WHERE id = '$_'}) } $a, $b;
    isnt($ca, $cb, 'the same text sent twice: two different ciphertexts');
    isnt((split /:/, $ca)[1], (split /:/, $cb)[1], '... with different IVs');
    is_deeply([node_decrypt([$ca, $cb])], ['same text', 'same text'], '... both decrypt (Node)');
}

# a 5000-code-point message round trips through both sides
{
    my $long = join '', map { chr(0x1F600 + $_ % 50) . "a\x{e9}" } 1 .. 1666;
    $long .= 'zz';
    is(length $long, 5000, 'a 5000-code-point mixed text');
    my $lid = data_of(send_message('doctor', $V1, 'nurse1', $long))->{id};
    my ($dec) = node_decrypt([psql_value(qq{SELECT content FROM messages WHERE id = '$lid'})]);
    ok(defined $dec && $dec eq $long, '... stored by nginx, decrypted by Node');
    my (undef, $m) = list_visit('nurse1', $V1);
    ok(($m->{$lid}{content} // '') eq $long, '... and listed back by nginx');
}

# --- Node writes, nginx reads -----------------------------------------------------------
my $NODE_V2  = "Written by the Node app (v2) \x{2014} \x{1F48A} a:b:c";
my $NODE_HEX = "Written by the Node app, legacy hex \x{e9}";
my ($node_v2_id, $node_hex_id) = insert_messages(
    { visit => $V1, from => 'doctor', to => 'patient1', content => $NODE_V2 },
    { visit => $V1, from => 'patient1', to => 'doctor', content => $NODE_HEX, format => 'hex' },
);
like(psql_value(qq{SELECT content FROM messages WHERE id = '$node_hex_id'}),
     qr/^[0-9a-f]{24}:[0-9a-f]{32}:[0-9a-f]+$/, 'the legacy row is <iv hex>:<tag hex>:<ct hex>');
{
    my ($res, $m) = list_visit('patient1', $V1);
    api_ok($res, 'GET the visit with Node-written rows: 200');
    is($m->{$node_v2_id}{content}, $NODE_V2, 'a Node-encrypted v2 message is returned decrypted');
    is($m->{$node_hex_id}{content}, $NODE_HEX, 'a Node-encrypted legacy hex message is returned decrypted');
    ok(!exists $m->{$_}{contentError}, "... no contentError on $_") for $node_v2_id, $node_hex_id;
    is($m->{$id}{content}, $PLAIN, "... nginx's own message beside them");
}

# --- tampered rows -------------------------------------------------------------------------
sub flip_b64 {                              # change one character of a base64 or hex part
    my ($s, $pos) = @_;
    my $c = substr($s, $pos, 1);
    substr($s, $pos, 1) = $c eq 'A' ? 'B' : $c eq '0' ? '1' : $c eq 'a' ? 'b' : 'A';
    return $s;
}
my ($t_ct, $t_tag, $t_iv, $t_hex, $t_junk, $t_key, $t_empty, $t_trunc) = insert_messages(
    map { { visit => $V1, from => 'nurse1', to => 'patient1', content => "tamper me $_" } } 1 .. 8);
{
    my %orig = map { $_ => psql_value(qq{SELECT content FROM messages WHERE id = '$_'}) }
               $t_ct, $t_tag, $t_iv, $t_junk, $t_empty, $t_trunc;
    my ($hex) = node_encrypt(['tamper me hex'], format => 'hex');
    my ($other_key) = node_encrypt(['under another key'], key => 'AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=');
    my %bad = (
        $t_ct    => flip_b64($orig{$t_ct}, -3),                                      # ciphertext
        $t_tag   => do { my @p = split /:/, $orig{$t_tag}; $p[2] = flip_b64($p[2], 2); join ':', @p },
        $t_iv    => do { my @p = split /:/, $orig{$t_iv};  $p[1] = flip_b64($p[1], 2); join ':', @p },
        $t_hex   => flip_b64($hex, -2),
        $t_junk  => 'v2:!!!:???:***',
        $t_key   => $other_key,
        $t_empty => '',
        $t_trunc => substr($orig{$t_trunc}, 0, 20),
    );
    psql(join ";\n", map { "UPDATE messages SET content = " . sql_quote($bad{$_}) . " WHERE id = '$_'" } keys %bad);
}
my %TAMPERED = ($t_ct => 'a flipped ciphertext byte', $t_tag => 'a flipped tag', $t_iv => 'a flipped IV',
                $t_hex => 'a flipped legacy hex value', $t_junk => 'v2 junk', $t_key => 'another key',
                $t_empty => 'an empty string', $t_trunc => 'a truncated value');
{
    my ($res, $m) = list_visit('patient1', $V1, 'limit=100');
    api_ok($res, 'GET a visit with 8 tampered rows: still 200');
    is(scalar(keys %$m), $res->json->{meta}{total}, '... every message of the visit is listed');
    for my $tid (sort keys %TAMPERED) {
        my $msg = $m->{$tid} || {};
        ok(exists $msg->{content} && !defined $msg->{content}, "$TAMPERED{$tid}: content null")
            or diag(explain $msg);
        is($msg->{contentError}, 'DECRYPTION_FAILED', "$TAMPERED{$tid}: contentError DECRYPTION_FAILED");
        is_deeply([@$msg{qw(id senderId recipientId visitId type)}],
                  [$tid, $ID{nurse1}, $ID{patient1}, $V1, 'TEXT'], "$TAMPERED{$tid}: the rest of it is there");
    }
    my @good = grep { !$TAMPERED{$_} } keys %$m;
    is(scalar(grep { defined $m->{$_}{content} && !exists $m->{$_}{contentError} } @good), scalar @good,
       'every other message is intact and decrypted (' . scalar(@good) . ')');
    is($m->{$id}{content}, $PLAIN, '... e.g. the first one');
    unlike($res->raw, qr/tamper me/, 'no garbage or partial plaintext of a tampered row in the response');
}
{
    my ($res, $m) = list_visit('patient1', $V1, 'unreadOnly=true&limit=100');
    is($m->{$t_ct}{contentError}, 'DECRYPTION_FAILED', 'unreadOnly=true: the tampered row is flagged the same way');
}
error_log_like(qr/decryption of "content" failed/, 'the failed decryption is logged');
error_log_unlike(qr/tamper me|Gate code|Ngiyabonga|Written by the Node/, 'the error log holds no message content');
ok($main->running, 'nginx is still running');
api_ok(response(GET => '/api/messages/unread/count', as => 'patient1'), 'and still answers');

# --- key rotation (SPEC §10): a new first key, the old one still decrypts --------------------
{
    my $new_key = do {
        open(my $fh, '<:raw', '/dev/urandom') or die $!;
        read($fh, my $b, 32); MIME::Base64::encode_base64($b, '');
    };
    my $rot = start_messages_nginx(name => 'rotated', keys => 'env:NEW_KEY env:ENCRYPTION_KEY',
                                   env => { NEW_KEY => $new_key });
    my $rr = response(GET => "/api/messages/visit/$V1?limit=100", as => 'patient1', nginx => $rot);
    my %m = map { $_->{id} => $_ } @{ data_of($rr) || [] };
    is($m{$id}{content}, $PLAIN, 'rotated keys: a row under the old key still decrypts');
    is($m{$node_hex_id}{content}, $NODE_HEX, '... a legacy hex row too');
    my $sent = response(POST => '/api/messages', as => 'nurse1', nginx => $rot,
                        headers => { 'Content-Type' => 'application/json' },
                        body => $JSONC->encode({ visitId => $V1, recipientId => $ID{patient1},
                                                 content => 'under the new key' }));
    api_ok($sent, 'rotated keys: POST 201', status => 201);
    my $nct = psql_value(qq{SELECT content FROM messages WHERE id = '} . (data_of($sent) || {})->{id} . q{'});
    is((node_decrypt([$nct], key => $new_key))[0], 'under the new key', '... encrypted with the new (first) key');
    ok(!defined((node_decrypt([$nct]))[0]), '... not with the old one');
}

done_ahava();
