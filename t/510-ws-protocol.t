# GET /ws after the upgrade (SPEC §8, RFC 6455 §5-§7), with a raw client
# that builds every frame by hand (t/lib/Ahava/Test/WS.pm):
#
#   - application frames: {"type":"PING"} is answered by a PONG
#     {type, data: {}, timestamp}; malformed JSON, no type, an unknown type
#     and binary frames (RFC 6455 leaves those to the application) get an
#     ERROR frame {type, data: {code: VALIDATION_ERROR, message}, timestamp}
#     and the socket stays usable; control PINGs get a PONG with their
#     payload, also between the fragments of a message, which completes;
#     characters split across fragments are accepted;
#   - every protocol violation closes with the RFC's code, then the server
#     closes TCP: unmasked frames, RSV bits, unknown opcodes, oversize or
#     fragmented control frames, a continuation without a message, a data
#     frame inside a fragmented message, non-minimal length encodings
#     (§5.2 "the minimal number of bytes MUST be used"), a 1-byte close and
#     invalid close codes (999, 1004-1006, 1015, 2999, 5000, ...) are 1002;
#     invalid UTF-8 in a text message (whole, in a later fragment, ending
#     inside a character; refused from the first bad fragment) or in a
#     close reason is 1007; a frame or a reassembled message over
#     ahava_ws_max_message (64k; 4k on a second server) is 1009.  After
#     each, the one worker is still the same process, logged no crash and
#     serves a fresh socket;
#   - the closing handshake: a valid code is echoed (no payload: no
#     payload), then the server closes TCP;
#   - liveness (ahava_ws_ping_interval 1s, ahava_ws_pong_timeout 2s on a
#     third server): a client answering PINGs stays, a silent one is closed
#     with 1001 (ngx_ahava_ws_ping_handler) once pong_timeout has passed;
#   - the worker does not block: while nurse1's LOCATION_UPDATE waits for
#     a row lock on the visit, other sockets are answered within 0.5 s; the
#     NURSE_LOCATION_UPDATE reaches the patient and the doctor once the
#     lock goes;
#   - a slow reader (ahava_ws_send_queue 64k on a fourth server, SO_RCVBUF
#     4k, never reading) is closed with 1008 when messages pile up for it,
#     the sender is never held up, the worker lets go of the socket and its
#     VmRSS comes back, another user's socket on the worker keeps working.
#
# Regressions this file found and holds: the answer to a valid frame lost
# when a bad frame (or the client's close) came in the same read; the ERROR
# for a frame without "type" not being JSON; a socket whose frame waited
# for PostgreSQL reading nothing, so its control PINGs waited too and a
# client answering every PING was closed for silence.
#
# One worker (workers => 1), so "the same worker" is one pid; the servers
# differ only in their ws settings and share the worker and its hub.
# Waits are polls with deadlines; the only timed windows are the "nothing
# happens" spans the contract is about (3.5 s of PINGs answered).
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Ahava::Test::WS;
use Ahava::Messages qw(send_message);
use Ahava::Visits qw(new_visit);
use Socket qw(IPPROTO_TCP TCP_NODELAY);
use Time::HiRes qw(time);

setup();

my %PORT = map { $_ => free_port() } qw(SMALL LIVE SLOW);
my $CONF = ws_config(after => <<'_EOC_');
# a smaller message limit; a short wait for the client's end after a close
server {
    listen       127.0.0.1:$TEST_NGINX_SMALL;
    location = /ws { ahava_ws; ahava_ws_max_message 4k; lingering_timeout 1s; }
}

# fast liveness checks
server {
    listen       127.0.0.1:$TEST_NGINX_LIVE;
    location = /ws { ahava_ws; ahava_ws_ping_interval 1s; ahava_ws_pong_timeout 2s; }
}

# a small send queue; the kernel's send buffer small too, so the queue
# fills after a few frames.  pong_timeout also bounds how long a blocked
# write may wait: 3s; pings rarely, so the silence check is not what
# closes the slow reader.
server {
    listen       127.0.0.1:$TEST_NGINX_SLOW sndbuf=16k;
    location = /ws {
        ahava_ws;
        ahava_ws_send_queue 64k;
        ahava_ws_ping_interval 10s;
        ahava_ws_pong_timeout 3s;
    }
}
_EOC_

my $N = start_nginx($CONF, workers => 1, vars => \%PORT);
ok(poll_until(10, sub { ((response(GET => '/health')->json || {})->{redis} // '') eq 'ok' }),
   'nginx is connected to Redis');
my @WORKERS = worker_pids($N);
is(scalar @WORKERS, 1, 'one worker');

my ($P1, $P2, $N1, $D) = @ID{qw(patient1 patient2 nurse1 doctor)};


my $TS = qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;

# --- helpers ------------------------------------------------------------------------------------

# frames of one message: the first with $op, the rest continuations, FIN
# on the last
sub fragments {
    my ($op, @parts) = @_;
    return map { ws_frame(opcode => $_ ? 0 : $op, fin => $_ == $#parts ? 1 : 0,
                          payload => $parts[$_]) } 0 .. $#parts;
}

# {"type":"PING","pad":"xxx"} of exactly $n bytes
sub ping_of_len {
    my ($n) = @_;
    my $base = '{"type":"PING","pad":""}';
    return '{"type":"PING","pad":"' . ('x' x ($n - length $base)) . '"}';
}

sub describe {
    my ($f) = @_;
    return 'nothing (timeout)' unless $f;
    return 'EOF' if $f->{eof};
    return "close " . ($f->{code} // 'without code') if $f->{opcode} == 8;
    return "text $f->{json}{type}" if $f->{opcode} == 1 && ref $f->{json} eq 'HASH' && $f->{json}{type};
    return "opcode $f->{opcode}: " . substr($f->{payload}, 0, 200);
}

# the worker is the one we started with, no crash logged, and it upgrades
# and answers a fresh socket
sub worker_fine {
    my ($name, %o) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @w = worker_pids($N);
    my $crash = $N->error_log =~ /exited on signal|segmentation fault/i;
    my $f = ws_raw(as => 'patient2', port => $o{port});
    my ($pong, @before) = $f->upgraded ? $f->ping_roundtrip(5) : ();
    $f->close_socket;
    ok("@w" eq "@WORKERS" && !$crash && $pong && !@before,
       "$name: the same worker, alive, serves a fresh socket")
        or diag("workers @w (were @WORKERS), crash logged: " . ($crash ? 'yes' : 'no')
                . ', fresh socket: ' . ($pong ? 'PONG' : 'no PONG'));
}

# Sends $bytes (a string or an array of frames) on a fresh socket of
# patient1 (or on => $socket); the server's next frame must be a close with
# $code (undef: a close without payload), then the TCP connection ends.
sub closes_with {
    my ($code, $name, $bytes, %o) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $r = $o{on} || ws_raw(as => 'patient1', port => $o{port});
    $r->send_bytes(ref $bytes ? join('', @$bytes) : $bytes);
    my ($close, @before) = $r->expect_close(5, no_reply => 1);
    my $want = defined $code ? "close $code" : 'close without code';
    my @expect = @{ $o{before} || [] };
    my %may = map { $_ => 1 } @expect;
    my @got = map { describe($_) } @before;
    ok($close && !$close->{eof} && describe($close) eq $want && $close->{fin} && !$close->{masked}
       && !$close->{rsv} && !grep({ !$may{$_} } @got),
       "$name: $want" . (@expect ? '' : ', nothing before it'))
        or diag('got: ' . join(' | ', @got, describe($close)));
    if (@expect) {
        # the answers to the valid frames before the bad one
        is(join(' | ', @got), join(' | ', @expect), "$name: ... after the answers to the frames before it");
    }
    ok($r->wait_eof(5), "$name: then the server closes the TCP connection");
    worker_fine($name, port => $o{port}) unless $o{no_worker_check};
    return $close;
}

# the next frame is a text frame with this JSON type; returns its JSON
sub next_json_is {
    my ($r, $type, $name, $timeout) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $f = $r->read_frame($timeout // 5);
    my $j = $f && !$f->{eof} && $f->{opcode} == 1 ? $f->{json} : undef;
    ok(ref $j eq 'HASH' && ($j->{type} // '') eq $type, "$name: a $type frame")
        or diag('got: ' . describe($f));
    return ref $j eq 'HASH' ? $j : undef;
}

# an ERROR frame {type, data: {code, message}, timestamp} with this code
sub error_frame_is {
    my ($r, $code, $name, %o) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $f = $r->read_frame(5);
    my $text = $f && !$f->{eof} && $f->{opcode} == 1 ? $f->{payload} : undef;
    ok(defined $text && $text =~ /^\{"type":"ERROR","data":\{"code":"\Q$code\E"/,
       "$name: an ERROR text frame with code $code") or diag('got: ' . describe($f));
    my $j = $f && $f->{json};
    ok(ref $j eq 'HASH' && ($j->{type} // '') eq 'ERROR' && ref $j->{data} eq 'HASH'
       && ($j->{data}{code} // '') eq $code && length($j->{data}{message} // '')
       && ($j->{timestamp} // '') =~ $TS
       && join(',', sort keys %$j) eq 'data,timestamp,type',
       "$name: valid JSON {type, data: {code, message}, timestamp}")
        or diag('got: ' . ($text // describe($f)));
}

# a PING round trip with nothing else before the PONG
sub usable {
    my ($r, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my ($pong, @before) = $r->ping_roundtrip(5);
    ok($pong && !@before, "$name: the socket stays usable (PING answered, nothing else)")
        or diag('before: ' . join(' | ', map { describe($_) } @before));
}

# --- application frames ---------------------------------------------------------------------------
{
    my $r = ws_raw(as => 'patient1');
    is($r->status, 101, 'raw socket of patient1: 101');
    $r->send_text('{"type":"PING"}');
    my $j = next_json_is($r, 'PONG', '{"type":"PING"}');
    is_deeply([sort keys %{ $j || {} }], [qw(data timestamp type)], 'PONG: keys {type, data, timestamp}');
    is_deeply($j && $j->{data}, {}, 'PONG: data {}');
    like($j && $j->{timestamp} // '', $TS, 'PONG: timestamp ISO-8601 UTC with ms');
    $r->send_text('{"type":"PING","data":{"x":1}}');
    next_json_is($r, 'PONG', 'PING with data');

    for my $case (['malformed JSON', '{"type":"PING"'],
                  ['not JSON at all', 'hello'],
                  ['an empty text frame', ''],
                  ['a JSON array', '[{"type":"PING"}]'],
                  ['a JSON string', '"PING"'],
                  ['an object without type', '{"data":{}}'],
                  ['an empty object', '{}'],
                  ['a numeric type', '{"type":5}'],
                  ['type null', '{"type":null}'],
                  ['an unknown type', '{"type":"NOPE"}'],
                  ['a lower-case ping', '{"type":"ping"}'],
                  ['a duplicate key', '{"type":"PING","type":"PING"}'],
                  ['a server-only type', '{"type":"NEW_MESSAGE","data":{}}'])
    {
        my ($name, $text) = @$case;
        $r->send_text($text);
        error_frame_is($r, 'VALIDATION_ERROR', $name);
        usable($r, $name);
    }

    # binary frames: not a close (RFC 6455 leaves it to the application),
    # an ERROR; their bytes are never checked as UTF-8
    $r->send_frame(opcode => 2, payload => '{"type":"PING"}');
    error_frame_is($r, 'VALIDATION_ERROR', 'a binary frame');
    usable($r, 'a binary frame');
    $r->send_bytes(join '', fragments(2, "\xff\xfe", "\xc0\x80"));
    error_frame_is($r, 'VALIDATION_ERROR', 'a fragmented binary message of invalid UTF-8');
    usable($r, 'a fragmented binary message');

    # control frames
    for my $p ('', 'hello', join('', map { chr } 0 .. 124)) {
        my $name = 'a control PING of ' . length($p) . ' bytes';
        $r->send_frame(opcode => 9, payload => $p);
        my $f = $r->read_frame(5);
        ok($f && !$f->{eof} && $f->{opcode} == 10 && $f->{payload} eq $p && $f->{fin}
           && !$f->{masked} && !$f->{rsv}, "$name: a PONG with the same payload, unmasked")
            or diag('got: ' . describe($f));
    }
    $r->send_frame(opcode => 10, payload => 'unsolicited');
    usable($r, 'an unsolicited PONG is ignored');

    # fragments
    $r->send_bytes(join '', fragments(1, '{"type":', '"PI', '', 'NG"}'));
    next_json_is($r, 'PONG', 'PING in four fragments (one empty)');
    {
        my ($a, $b) = fragments(1, '{"type":', '"PING"}');
        $r->send_bytes($a . ws_frame(opcode => 9, payload => 'between') . $b);
        my $f = $r->read_frame(5);
        ok($f && !$f->{eof} && $f->{opcode} == 10 && $f->{payload} eq 'between',
           'a control PING between two fragments: answered by a PONG with its payload')
            or diag('got: ' . describe($f));
        next_json_is($r, 'PONG', '... and the fragmented message completes');
        $r->send_bytes($a . ws_frame(opcode => 10, payload => 'p') . $b);
        next_json_is($r, 'PONG', 'a PONG between two fragments is ignored, the message completes');
    }
    $r->send_bytes(join '', fragments(1, qq({"type":"PING","x":"\xe2\x82), qq(\xac"})));
    next_json_is($r, 'PONG', 'a 3-byte character split across two fragments: accepted');
    $r->send_bytes(join '', fragments(1, qq({"type":"PING","x":"\xf0\x9f), "\x98", qq(\x80"})));
    next_json_is($r, 'PONG', 'a 4-byte character split across three fragments: accepted');
    $r->send_text(qq({"type":"PING","x":"\x{2014}\x{1F697}\x{10FFFF}"}));
    next_json_is($r, 'PONG', 'multi-byte characters up to U+10FFFF in one frame: accepted');

    # a frame written byte by byte, and frames pipelined in one write
    setsockopt($r->sock, IPPROTO_TCP, TCP_NODELAY, 1);
    $r->send_bytes($_) for split //, ws_frame(opcode => 1, payload => '{"type":"PING"}');
    next_json_is($r, 'PONG', 'a frame arriving one byte at a time');
    $r->send_bytes(join '', map { ws_frame(opcode => 9, payload => "p$_") } 1 .. 5);
    my @got = map { my $f = $r->read_frame(5); $f && !$f->{eof} && $f->{opcode} == 10 ? $f->{payload} : describe($f) } 1 .. 5;
    is("@got", 'p1 p2 p3 p4 p5', 'five PINGs in one write: five PONGs in order');

    # lengths at the limits of each encoding, and the message limit itself
    for my $len (125, 126, 65535, 65536) {
        $r->send_text(ping_of_len($len));
        next_json_is($r, 'PONG', "a $len-byte message (minimal length encoding)");
    }
    $r->send_bytes(join '', fragments(1, unpack('(a16384)*', ping_of_len(65536))));
    next_json_is($r, 'PONG', 'a 65536-byte message in four fragments: at the limit, accepted');
    usable($r, 'after the big messages');

    $r->send_close(1000, 'done');
    my ($close) = $r->expect_close(5, no_reply => 1);
    is($close && $close->{code}, 1000, 'close 1000 with a reason: echoed with 1000');
    ok($r->wait_eof(5), '... then the server closes the TCP connection');
}

# --- protocol violations: 1002 --------------------------------------------------------------------
closes_with(1002, 'an unmasked text frame', ws_frame(opcode => 1, payload => '{"type":"PING"}', mask => 0));
closes_with(1002, 'an unmasked PING', ws_frame(opcode => 9, payload => 'x', mask => 0));
closes_with(1002, 'an unmasked close', ws_frame(opcode => 8, payload => pack('n', 1000), mask => 0));
closes_with(1002, 'an unmasked continuation',
            [ws_frame(opcode => 1, fin => 0, payload => '{"type":'),
             ws_frame(opcode => 0, payload => '"PING"}', mask => 0)]);
for my $rsv ([4, 'RSV1 (no extension negotiated)'], [2, 'RSV2'], [1, 'RSV3'], [7, 'all RSV bits']) {
    closes_with(1002, "a text frame with $rsv->[1]",
                ws_frame(opcode => 1, rsv => $rsv->[0], payload => '{"type":"PING"}'));
}
closes_with(1002, 'a PING with RSV1', ws_frame(opcode => 9, rsv => 4, payload => 'x'));
closes_with(1002, 'a continuation with RSV2',
            [ws_frame(opcode => 1, fin => 0, payload => '{"type":'),
             ws_frame(opcode => 0, rsv => 2, payload => '"PING"}')]);
for my $op (3 .. 7, 0xB .. 0xF) {
    closes_with(1002, sprintf('unknown opcode 0x%X', $op), ws_frame(opcode => $op, payload => 'x'));
}
closes_with(1002, 'unknown opcode 0x3 between two fragments',
            [ws_frame(opcode => 1, fin => 0, payload => '{"type":'),
             ws_frame(opcode => 3, payload => 'x')]);

closes_with(1002, 'a PING of 126 bytes', ws_frame(opcode => 9, payload => 'x' x 126));
closes_with(1002, 'a PONG of 126 bytes', ws_frame(opcode => 10, payload => 'x' x 126));
closes_with(1002, 'a close of 126 bytes', ws_frame(opcode => 8, payload => pack('n', 1000) . 'x' x 124));
closes_with(1002, 'a PING claiming 65536 bytes (header only)', ws_frame(opcode => 9, len => 65536));
closes_with(1002, 'a fragmented PING (FIN=0)', ws_frame(opcode => 9, fin => 0, payload => 'x'));
closes_with(1002, 'a fragmented PONG (FIN=0)', ws_frame(opcode => 10, fin => 0, payload => 'x'));
closes_with(1002, 'a fragmented close (FIN=0)', ws_frame(opcode => 8, fin => 0, payload => pack('n', 1000)));
closes_with(1002, 'a fragmented PING inside a fragmented message',
            [ws_frame(opcode => 1, fin => 0, payload => '{"type":'),
             ws_frame(opcode => 9, fin => 0, payload => 'x')]);

closes_with(1002, 'a continuation without a message (FIN=1)', ws_frame(opcode => 0, payload => '{"type":"PING"}'));
closes_with(1002, 'a continuation without a message (FIN=0)', ws_frame(opcode => 0, fin => 0, payload => '{'));
closes_with(1002, 'a continuation after a complete message',
            [ws_frame(opcode => 1, payload => '{"type":"PING"}'), ws_frame(opcode => 0, payload => 'x')],
            before => ['text PONG']);
closes_with(1002, 'a text frame while a fragmented message is open',
            [ws_frame(opcode => 1, fin => 0, payload => '{"type":'),
             ws_frame(opcode => 1, payload => '{"type":"PING"}')]);
closes_with(1002, 'a binary frame while a fragmented text message is open',
            [ws_frame(opcode => 1, fin => 0, payload => '{"type":'),
             ws_frame(opcode => 2, fin => 0, payload => 'x')]);
closes_with(1002, 'a text frame while a fragmented binary message is open',
            [ws_frame(opcode => 2, fin => 0, payload => 'x'),
             ws_frame(opcode => 1, payload => '{"type":"PING"}')]);

# RFC 6455 §5.2: "the minimal number of bytes MUST be used to encode the length"
closes_with(1002, 'a 16-bit length for 5 bytes', ws_frame(opcode => 1, payload => 'hello', len_form => 16));
closes_with(1002, 'a 16-bit length for 125 bytes', ws_frame(opcode => 1, payload => ping_of_len(125), len_form => 16));
closes_with(1002, 'a 64-bit length for 126 bytes', ws_frame(opcode => 1, payload => ping_of_len(126), len_form => 64));
closes_with(1002, 'a 64-bit length for 65535 bytes', ws_frame(opcode => 1, len => 65535, len_form => 64));
closes_with(1002, 'a 64-bit length for 0 bytes', ws_frame(opcode => 1, payload => '', len_form => 64));
closes_with(1002, 'a 64-bit length with the most significant bit set',
            "\x81\xFF\x80\x00\x00\x00\x00\x00\x00\x00" . 'mask');

# --- UTF-8: 1007 ----------------------------------------------------------------------------------
for my $case (["\xff", 'the byte FF'], ["\x80", 'a lone continuation byte'],
              ["\xc0\xaf", 'an overlong "/"'], ["\xe0\x80\xaf", 'a 3-byte overlong'],
              ["\xed\xa0\x80", 'a UTF-16 surrogate (U+D800)'],
              ["\xf4\x90\x80\x80", 'a code point above U+10FFFF'],
              ["\xf8\x88\x80\x80\x80", 'a 5-byte sequence'],
              ["\xe2\x82", 'a character cut at the end of the message'])
{
    my ($bytes, $name) = @$case;
    closes_with(1007, "text with $name", ws_frame(opcode => 1, payload => qq({"type":"PING","x":"$bytes"})));
}
closes_with(1007, 'invalid UTF-8 in the second of two fragments',
            [fragments(1, '{"type":"PING","x":"', qq(\xff"}))]);
closes_with(1007, 'a character started in one fragment, broken in the next',
            [fragments(1, qq({"type":"PING","x":"\xe2\x82), '("}')]);
closes_with(1007, 'a message ending inside a character begun in an earlier fragment',
            [fragments(1, qq({"type":"PING","x":"\xf0\x9f), "\x98")]);
closes_with(1007, 'invalid UTF-8 in a first fragment: refused before the message ends',
            ws_frame(opcode => 1, fin => 0, payload => qq({"type":"PING","x":"\xff)));
closes_with(1007, 'invalid UTF-8 between fragments with a PING between them',
            [ws_frame(opcode => 1, fin => 0, payload => '{"x":"'), ws_frame(opcode => 9, payload => 'mid'),
             ws_frame(opcode => 0, payload => qq(\xc0\xaf"}))],
            before => ['opcode 10: mid']);

# --- size: 1009 ----------------------------------------------------------------------------------------
closes_with(1009, 'one frame of 65537 bytes (sent whole)', ws_frame(opcode => 1, payload => ping_of_len(65537)));
closes_with(1009, 'one frame claiming 65537 bytes (header only: refused from its header)',
            ws_frame(opcode => 1, len => 65537));
closes_with(1009, 'one frame claiming 2^40 bytes', ws_frame(opcode => 1, len => 2**40));
closes_with(1009, 'one binary frame of 65537 bytes', ws_frame(opcode => 2, payload => 'x' x 65537));
# A client still sending when the server closes: the server stops writing (FIN after its Close frame)
# and reads on, dropping what comes, until the client's end; its unread bytes must not make the
# close a TCP reset, which some clients' stacks answer by dropping the Close frame unread (1006;
# Linux keeps it, so the test looks at the reset itself).  256 KiB: all of it is sent before the
# server closes, so no write of this client meets the reset first.
for my $i (1 .. 3) {
    my $r = ws_raw(as => 'patient1');
    $r->send_bytes(ws_frame(opcode => 1, len => 2**40) . (q(x) x (256 << 10)));
    my ($close) = $r->expect_close(5, no_reply => 1);
    ok($close && !$close->{eof} && ($close->{code} // 0) == 1009, "a client sending 256 KiB after a header claiming 2^40 bytes ($i): close 1009")
        or diag('got: ' . describe($close));
    ok($r->wait_eof(5), "... ($i): then the server's end of the stream");
    is($r->{read_error}, undef, "... ($i): a clean end, not a reset") or diag("write error: " . ($r->{write_error} // 'none'));
}
closes_with(1009, 'fragments of 32768 + 32768 + 1 bytes',
            [fragments(1, unpack('(a32768)*', ping_of_len(65537)))]);
closes_with(1009, 'a 65536-byte first fragment, then a 1-byte continuation',
            [ws_frame(opcode => 1, fin => 0, payload => 'x' x 65536), ws_frame(opcode => 0, payload => 'x')]);

# ahava_ws_max_message 4k
{
    my $r = ws_raw(as => 'patient1', port => $PORT{SMALL});
    is($r->status, 101, 'max_message 4k: 101');
    $r->send_text(ping_of_len(4096));
    next_json_is($r, 'PONG', 'max_message 4k: a 4096-byte message is accepted');
    $r->send_bytes(join '', fragments(1, unpack('(a2048)*', ping_of_len(4096))));
    next_json_is($r, 'PONG', 'max_message 4k: 2048 + 2048 bytes in fragments are accepted');
    $r->send_frame(opcode => 9, payload => 'x' x 125);
    my $f = $r->read_frame(5);
    ok($f && !$f->{eof} && $f->{opcode} == 10 && $f->{len} == 125, 'max_message 4k: a 125-byte PING is answered')
        or diag('got: ' . describe($f));
    closes_with(1009, 'max_message 4k: a 4097-byte message after those', ws_frame(opcode => 1, payload => ping_of_len(4097)),
                on => $r, port => $PORT{SMALL});
}
closes_with(1009, 'max_message 4k: one frame of 4097 bytes', ws_frame(opcode => 1, payload => ping_of_len(4097)),
            port => $PORT{SMALL});
closes_with(1009, 'max_message 4k: fragments of 2048 + 2048 + 1 bytes',
            [fragments(1, unpack('(a2048)*', ping_of_len(4097)))], port => $PORT{SMALL});
closes_with(1009, 'max_message 4k: a control PING between fragments does not reset the count',
            [ws_frame(opcode => 1, fin => 0, payload => 'x' x 4000), ws_frame(opcode => 9, payload => 'p'),
             ws_frame(opcode => 0, payload => 'x' x 97)], port => $PORT{SMALL},
            before => ['opcode 10: p']);

# the wait after a close is bounded: a client that keeps sending and never ends is cut at
# lingering_timeout (1s here), the worker's memory back
{
    my $r = ws_raw(as => 'patient1', port => $PORT{SMALL});
    $r->send_frame(opcode => 1, payload => ping_of_len(4097));
    my ($close) = $r->expect_close(5, no_reply => 1);
    ok($close && !$close->{eof} && ($close->{code} // 0) == 1009, 'lingering: close 1009');
    ok($r->wait_eof(5), 'lingering: the server stops writing at once (FIN)');
    my $t0 = time;
    my $cut = poll_until(6, sub { !$r->send_bytes('x' x 512) });
    my $took = time - $t0;
    ok($cut, 'lingering: a client that keeps sending is cut off') or diag("still open after ${took}s");
    cmp_ok($took, '>=', 0.5, "lingering: ... not before lingering_timeout (${took}s: the server read on meanwhile)");
    worker_fine('lingering', port => $PORT{SMALL});
}

# --- the closing handshake ------------------------------------------------------------------------------
for my $code (0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535) {
    closes_with(1002, "a close with the invalid code $code", ws_frame(opcode => 8, payload => pack('n', $code)));
}
closes_with(1002, 'a close with a 1-byte payload', ws_frame(opcode => 8, payload => "\x03"));
closes_with(1007, 'a close reason of invalid UTF-8', ws_frame(opcode => 8, payload => pack('n', 1000) . "bye \xff"));
closes_with(1007, 'a close reason ending inside a character',
            ws_frame(opcode => 8, payload => pack('n', 1000) . "bye \xe2\x82"));
for my $case ([1000, 'bye'], [1001, ''], [1002, ''], [1003, ''], [1007, ''], [1008, ''], [1009, ''],
              [1010, ''], [1011, ''], [1012, ''], [1013, ''], [1014, ''], [3000, ''], [4000, 'app'], [4999, ''],
              [1000, "\x{2014}" x 41])
{
    my ($code, $reason) = @$case;
    utf8::encode($reason);
    closes_with($code, "a close $code" . (length $reason ? ' with a ' . length($reason) . '-byte reason' : '')
                . ': echoed', ws_frame(opcode => 8, payload => pack('n', $code) . $reason));
}
# RFC 6455 §5.5.2: a PING received before the Close MUST be answered
closes_with(1000, 'a control PING then a close in one write',
            [ws_frame(opcode => 9, payload => 'last'), ws_frame(opcode => 8, payload => pack('n', 1000))],
            before => ['opcode 10: last']);
closes_with(undef, 'a close without payload: answered by a close without payload', ws_frame(opcode => 8, payload => ''));
closes_with(1000, 'a close between two fragments: the closing handshake wins',
            [ws_frame(opcode => 1, fin => 0, payload => '{"type":'), ws_frame(opcode => 8, payload => pack('n', 1000))]);
{
    # frames after the close are not served
    my $r = ws_raw(as => 'patient1');
    $r->send_bytes(ws_frame(opcode => 8, payload => pack('n', 1000)) . ws_frame(opcode => 1, payload => '{"type":"PING"}'));
    my ($close, @before) = $r->expect_close(5, no_reply => 1);
    ok($close && ($close->{code} // 0) == 1000 && !@before, 'a PING after our close: the close echoed, no PONG')
        or diag('got: ' . join(' | ', map { describe($_) } @before, $close));
    my $f = $r->read_frame(5);
    ok($f && $f->{eof}, '... then EOF, nothing else') or diag('got: ' . describe($f));
}
ok(poll_until(5, sub { redis_numsub($P1) == 0 && redis_numsub($P2) == 0 }),
   'every socket closed above left its session: no subscription left');

# --- liveness: ahava_ws_ping_interval 1s, ahava_ws_pong_timeout 2s --------------------------------
{
    my $t0 = time;
    my $ans = ws_raw(as => 'patient1', port => $PORT{LIVE});
    my $mute = ws_raw(as => 'patient2', port => $PORT{LIVE});
    ok($ans->upgraded && $mute->upgraded, 'liveness: two sockets');
    my (%pings, %end, %other);
    my $deadline = $t0 + 6;
    while (time < $deadline) {
        for my $c (['ans', $ans], ['mute', $mute]) {
            my ($k, $r) = @$c;
            next if $end{$k};
            my $f = $r->read_frame(0.02) or next;
            if ($f->{eof} || $f->{opcode} == 8) {
                $end{$k} = { f => $f, t => time - $t0 };
            } elsif ($f->{opcode} == 9) {
                push @{ $pings{$k} }, time - $t0;
                $r->send_frame(opcode => 10, payload => $f->{payload}) if $k eq 'ans';
            } else {
                push @{ $other{$k} }, describe($f);
            }
        }
        last if $end{mute} && time - $t0 > 3.5;
    }
    my @ap = @{ $pings{ans} || [] };
    my @mp = @{ $pings{mute} || [] };
    ok(@ap && $ap[0] < 2, 'liveness: a server PING within 2 s of the upgrade (interval 1 s)')
        or diag("pings at @ap");
    ok(@ap >= 3, 'liveness: a PING about every second (3+ in 3.5 s)') or diag("pings at @ap");
    ok(!$end{ans}, 'liveness: the client answering PINGs stays open past pong_timeout (3.5 s)')
        or diag('ended at ' . $end{ans}{t} . ': ' . describe($end{ans}{f}));
    ok(!$other{ans} && !$other{mute}, 'liveness: nothing but PINGs came unasked')
        or diag(explain \%other);
    my $e = $end{mute};
    ok($e && !$e->{f}{eof} && ($e->{f}{code} // 0) == 1001,
       'liveness: the silent client is closed with 1001 (going away)')
        or diag($e ? describe($e->{f}) : 'not closed');
    ok($e && $e->{t} >= 1.9 && $e->{t} < 4.5, 'liveness: ... once pong_timeout (2 s) has passed, not before')
        or diag('closed at ' . ($e ? $e->{t} : 'never'));
    ok(@mp >= 1 && $e && $mp[0] < $e->{t}, 'liveness: ... after it was sent a PING it did not answer')
        or diag("pings at @mp");
    ok($mute->wait_eof(5), 'liveness: ... then the server closes TCP');
    usable($ans, 'liveness: the answering client');
    $ans->send_close(1000);
    my ($close) = $ans->expect_close(5, no_reply => 1);
    is($close && $close->{code}, 1000, 'liveness: its close is echoed');
    worker_fine('liveness');
}

# --- the worker does not block on PostgreSQL --------------------------------------------------------
# a LOCATION_UPDATE waits for a row lock; the worker serves the others
sub control_pong_within {
    my ($r, $payload, $timeout) = @_;
    my $t0 = time;
    $r->send_frame(opcode => 9, payload => $payload);
    my $f = $r->read_frame($timeout);
    return ($f && !$f->{eof} && $f->{opcode} == 10 && $f->{payload} eq $payload) ? time - $t0 : undef;
}

{
    my $v = new_visit(status => 'EN_ROUTE');
    my $nur = ws_raw(as => 'nurse1');
    my $pat = ws_raw(as => 'patient1');
    my $doc = ws_raw(as => 'doctor');
    usable($_->[0], "non-blocking: $_->[1]") for [$nur, 'nurse1'], [$pat, 'patient1'], [$doc, 'doctor'];
    ok(poll_until(5, sub { redis_numsub($P1) == 1 && redis_numsub($D) == 1 }),
       'non-blocking: patient1 and the doctor are subscribed');

    my $lock = Ahava::Visits::RowLock->new($v);
    $nur->send_json({ type => 'LOCATION_UPDATE', data => { visitId => $v, lat => -26.5, lng => 28.25 } });
    ok(poll_until(5, sub { pg_lock_waiters() >= 1 }), "non-blocking: nurse1's LOCATION_UPDATE waits for the row lock");

    my ($pong) = $doc->ping_roundtrip(2);
    ok($pong && $pong->{_rtt} < 0.5, "non-blocking: meanwhile another socket's PING is answered within 0.5 s")
        or diag($pong ? "after $pong->{_rtt} s" : 'no PONG');
    my $rtt = control_pong_within($doc, 'other', 2);
    ok(defined $rtt && $rtt < 0.5, "non-blocking: ... and its control PING within 0.5 s")
        or diag(defined $rtt ? "after $rtt s" : 'no PONG');
    {
        my $h = response(GET => '/health');
        is($h->status, 200, 'non-blocking: ... and GET /health');
    }
    {
        my $rtt = control_pong_within($nur, 'same', 0.5);
        ok(defined $rtt, 'non-blocking: a control PING on the waiting socket itself is answered within 0.5 s');
    }
    $nur->send_json({ type => 'PING' });    # after the update, in order
    my $early = $pat->read_frame(0);
    ok(!$early, 'non-blocking: the patient got nothing while the lock was held')
        or diag('got: ' . describe($early));

    $lock->release;
    for my $c ([$pat, 'patient1'], [$doc, 'the doctor']) {
        my $j = next_json_is($c->[0], 'NURSE_LOCATION_UPDATE', "non-blocking: lock released, $c->[1]");
        ok($j && ($j->{data}{nurseId} // '') eq $N1 && ($j->{data}{lat} // 0) == -26.5
           && ($j->{data}{lng} // 0) == 28.25, "non-blocking: $c->[1]: data {nurseId, lat, lng}")
            or diag(explain $j);
    }
    # the nurse: her PINGs are answered (the control one at once), no ERROR
    my (@got, $json_pong);
    my $deadline = time + 5;
    while (!$json_pong && time < $deadline) {
        my $f = $nur->read_frame($deadline - time) or last;
        push @got, describe($f);
        last if $f->{eof} || $f->{opcode} == 8;
        $json_pong = 1 if $f->{opcode} == 1 && ($f->{json}{type} // '') eq 'PONG';
    }
    ok($json_pong && !grep({ !/^(?:opcode 10: same|text PONG)$/ } @got),
       'non-blocking: the nurse gets the PONGs of what she sent meanwhile, nothing else (the update is no error)')
        or diag('got: ' . join(' | ', @got));
    is(psql_value(qq{SELECT "gpsCoordinates"->-1->>'lat' FROM visits WHERE id = '$v'}), '-26.5',
       'non-blocking: the point is stored');
    $_->close_socket for $nur, $pat, $doc;
}

# a LOCATION_UPDATE waiting longer than pong_timeout, on a client that
# answers every PING (ahava_ws_pong_timeout 2s)
{
    my $v = new_visit(status => 'EN_ROUTE');
    my $nur = ws_raw(as => 'nurse1', port => $PORT{LIVE});
    usable($nur, 'a slow statement: nurse1 on the 1s/2s server');
    my $lock = Ahava::Visits::RowLock->new($v);
    $nur->send_json({ type => 'LOCATION_UPDATE', data => { visitId => $v, lat => 1, lng => 2 } });
    ok(poll_until(5, sub { pg_lock_waiters() >= 1 }), 'a slow statement: the LOCATION_UPDATE waits for the lock');
    my ($end, $pings) = (undef, 0);
    my $deadline = time + 3.5;
    while (!$end && time < $deadline) {
        my $f = $nur->read_frame($deadline - time) or last;
        if ($f->{eof} || $f->{opcode} == 8) { $end = $f; last }
        if ($f->{opcode} == 9) { $pings++; $nur->send_frame(opcode => 10, payload => $f->{payload}) }
    }
    ok($pings >= 1, 'a slow statement: the server still PINGs the client meanwhile');
    ok(!$end, 'a slow statement: the client answering PINGs is not closed for silence (3.5 s)')
        or diag('got: ' . describe($end));
    $lock->release;
    ok(poll_until(5, sub { pg_lock_waiters() == 0 }), 'a slow statement: nothing waits after the release');
    $nur->close_socket;
    worker_fine('a slow statement ended', port => $PORT{LIVE});
}

# --- a slow reader: ahava_ws_send_queue 64k ------------------------------------------------------------
{
    my $other = ws_raw(as => 'patient2');
    my $slow = ws_raw(as => 'patient1', port => $PORT{SLOW}, rcvbuf => 4096);
    is($slow->status, 101, 'slow reader: patient1 with SO_RCVBUF 4k: 101');
    usable($slow, 'slow reader, before it stops reading');
    usable($other, 'slow reader: patient2 on the main server');
    ok(poll_until(5, sub { redis_numsub($P1) == 1 && redis_numsub($P2) == 1 }),
       'slow reader: patient1 and patient2 are subscribed');
    my ($w) = @WORKERS;
    my $base = vm_rss($w);
    ok($base, "slow reader: the worker's VmRSS before: $base kB");

    my $content = substr(join('', map { "line $_ of a long note. " } 1 .. 300), 0, 3995);
    my ($sent, @bad) = (0);
    for my $i (1 .. 300) {
        my $res = send_message('nurse1', $ID{visit1}, 'patient1', sprintf('%04d ', $i) . $content);
        push @bad, $res->status unless $res->status == 201;
        $sent++;
        last if $N->error_log =~ /does not keep up/;
    }
    ok(!@bad, "slow reader: the sender is never held up ($sent messages of 4000 characters, all 201)")
        or diag("statuses: @bad");
    error_log_like(qr/websocket client does not keep up \(\d+ bytes queued\), closing with 1008/,
                   'slow reader: closed with 1008 once its queue passed 64k');
    my $port = $slow->local_port;
    my $st;
    ok(poll_until(10, sub { $st = tcp_state($PORT{SLOW}, $port); !defined $st || $st ne 'ESTAB' }),
       'slow reader: the server lets go of the connection (no longer ESTABLISHED on its side)')
        or diag("state $st");
    ok(!tcp_owner_pid($PORT{SLOW}, $port), 'slow reader: ... and no process holds it');
    ok(poll_until(5, sub { redis_numsub($P1) == 0 }), "slow reader: its session is gone (no subscription)");
    SKIP: {
        # AddressSanitizer keeps freed memory in quarantine: RSS says nothing
        skip 'RSS under AddressSanitizer', 1 if $ENV{TEST_NGINX_ASAN};
        my $rss;
        ok(poll_until(5, sub { $rss = vm_rss($w); $rss <= $base + 2048 }),
           "slow reader: the worker's VmRSS is back within 2 MiB of before")
            or diag("VmRSS $rss kB, before $base kB");
    }

    usable($other, 'slow reader: the other user on the same worker');
    my $res = send_message('nurse2', $ID{visit2}, 'patient2', 'still delivered');
    is($res->status, 201, 'slow reader: a message to patient2: 201');
    my $j = next_json_is($other, 'NEW_MESSAGE', 'slow reader: patient2');
    is($j && $j->{data}{content}, 'still delivered', 'slow reader: patient2 gets its message');
    worker_fine('slow reader');

    # what the slow reader finally reads: whole NEW_MESSAGE frames, maybe a
    # cut one, then (its queue was dropped) the close 1008 if it went out,
    # then EOF
    my (@frames, $last);
    while (1) {
        my $f = $slow->read_frame(5) or last;
        if ($f->{eof}) { $last = $f; last }
        push @frames, $f;
        last if $f->{opcode} == 8;
    }
    my @msgs = grep { $_->{opcode} == 1 && ($_->{json}{type} // '') eq 'NEW_MESSAGE' } @frames;
    ok(@msgs && @msgs == grep({ $_->{opcode} == 1 } @frames), 'slow reader: it reads NEW_MESSAGE frames first')
        or diag(scalar(@frames) . ' frames');
    my $close = grep({ $_->{opcode} == 8 } @frames) ? $frames[-1] : undef;
    diag('slow reader: ' . scalar(@msgs) . ' messages then '
         . ($close ? describe($close) : $last ? 'EOF (' . ($last->{buffered} // 0) . ' bytes of a cut frame)' : 'nothing'))
        if $ENV{TEST_VERBOSE};
    ok(!$close || ($close->{code} // 0) == 1008, 'slow reader: a close frame at the end, if any, is 1008')
        or diag('got: ' . describe($close));
    ok($close ? $slow->wait_eof(5) : $last, 'slow reader: then EOF');
    $slow->close_socket;
    $other->close_socket;
}

# --- a steady slow reader: the write timeout runs between two writes -------------------------------
# A ?since= replay keeps the queue between a quarter and a half of 64k while
# the client reads: the queue never empties for the ~6 s the client takes,
# twice the 3 s pong_timeout of this server.  A client that reads is not one
# that stopped reading: it gets everything, and is not closed.  (The messages
# are dated a second ahead: after every other message to patient1.)
{
    my $mark = (Ahava::Messages::insert_messages({ visit => $ID{visit1}, from => 'nurse1',
        to => 'patient1', content => 'the mark', at => q{LOCALTIMESTAMP(3) + interval '1 second'} }))[0];
    my $note = substr(join('', map { "line $_ of a long note. " } 1 .. 200), 0, 2990);
    Ahava::Messages::insert_messages(map { { visit => $ID{visit1}, from => 'nurse1', to => 'patient1',
        content => sprintf('%04d %s', $_, $note),
        at => sprintf(q{LOCALTIMESTAMP(3) + interval '1 second' + interval '%d milliseconds'}, $_) } } 1 .. 130);
    my $t0 = time;
    my $r = ws_raw(as => 'patient1', port => $PORT{SLOW}, rcvbuf => 4096, query => [since => $mark]);
    is($r->status, 101, 'steady slow reader: ?since= with SO_RCVBUF 4k: 101');
    my ($n, $end) = (0);
    while ($n < 130) {
        my $f = $r->read_frame(5);
        if (!$f || $f->{eof} || $f->{opcode} == 8) { $end = $f; last }
        $n++ if $f->{opcode} == 1 && ($f->{json}{type} // '') eq 'NEW_MESSAGE';
        Time::HiRes::sleep(0.045);
    }
    my $took = time - $t0;
    is($n, 130, sprintf('steady slow reader: all 130 messages of 3 KB read in %.1f s', $took))
        or diag('ended by ' . ($end ? describe($end) : 'a timeout'));
    cmp_ok($took, '>', 3.5, '... longer than pong_timeout (3 s): the timeout was not what it measured');
    usable($r, 'steady slow reader: afterwards');
    $r->close_socket;
    worker_fine('steady slow reader');
}

# --- live events held behind a paused replay ------------------------------------------------------
# The replay waits while more than half of the 64k queue waits to be
# written; live events that come meanwhile are held behind it.  Held bytes
# are not what waits to be written: 8 of them (24 KB, over a quarter of the
# queue) must not keep the replay waiting once the client reads again.
{
    my $note = substr(join('', map { "line $_ of a long note. " } 1 .. 200), 0, 2990);
    my $mark = (Ahava::Messages::insert_messages({ visit => $ID{visit1}, from => 'nurse1',
        to => 'patient1', content => 'the second mark', at => q{LOCALTIMESTAMP(3) + interval '2 seconds'} }))[0];
    Ahava::Messages::insert_messages(map { { visit => $ID{visit1}, from => 'nurse1', to => 'patient1',
        content => sprintf('backlog %04d %s', $_, $note),
        at => sprintf(q{LOCALTIMESTAMP(3) + interval '2 seconds' + interval '%d milliseconds'}, $_) } } 1 .. 60);
    my $r = ws_raw(as => 'patient1', port => $PORT{SLOW}, rcvbuf => 4096, query => [since => $mark]);
    is($r->status, 101, 'held behind a replay: ?since= with SO_RCVBUF 4k, not reading: 101');
    ok(poll_until(5, sub { redis_numsub($P1) >= 1 }), 'held behind a replay: subscribed');
    my @bad;
    for my $i (1 .. 8) {
        my $res = send_message('nurse1', $ID{visit1}, 'patient1', sprintf('live %d %s', $i, $note));
        push @bad, $res->status unless $res->status == 201;
    }
    ok(!@bad, 'held behind a replay: 8 live messages of 3 KB sent meanwhile') or diag("@bad");
    my (%got, $end);
    while (1) {
        my $f = $r->read_frame(5);
        if (!$f || $f->{eof} || $f->{opcode} == 8) { $end = $f; last }
        next unless $f->{opcode} == 1 && ($f->{json}{type} // '') eq 'NEW_MESSAGE';
        my ($kind) = ($f->{json}{data}{content} // '') =~ /^(backlog|live)/;
        $got{$kind // 'other'}++;
        last if ($got{backlog} // 0) == 60 && ($got{live} // 0) == 8;
    }
    is($got{backlog}, 60, 'held behind a replay: the whole backlog is replayed')
        or diag(explain(\%got), 'ended by ', ($end ? describe($end) : 'a timeout'));
    is($got{live}, 8, '... then the 8 live messages held behind it');
    usable($r, 'held behind a replay: afterwards');
    $r->close_socket;
    worker_fine('held behind a replay');
}

done_ahava();
