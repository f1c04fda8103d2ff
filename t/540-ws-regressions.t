# GET /ws: regressions found by reading the session code (issue 10), each
# with the scenario that broke it, on one worker:
#
#   - a worker keeps one spare message buffer; a location with a larger
#     ahava_ws_max_message must never be handed a smaller spare (a heap
#     overflow: the ASan run reports it);
#   - ?since= on a socket whose first frame started a statement that waits
#     on a row lock: the replay waits for it (one statement per socket at
#     a time; two at once destroyed the running one's memory), then
#     replays everything, in order;
#   - a client that keeps sending while its statement waits: what waits
#     for it is bounded (the server stops reading, TCP holds the client),
#     and once the statement is done every message is answered, in order.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Ahava::Test::WS;
use Ahava::Test::Util qw(free_port);
use Ahava::Messages ();
use Ahava::Visits qw(new_visit);
use Time::HiRes qw(time);

setup();

my $CONF = ws_config(ws => 'ahava_ws_max_message 256k;', after => <<'_EOC_');

server {
    listen       127.0.0.1:$TEST_NGINX_SMALL;
    location = /ws { ahava_ws; ahava_ws_max_message 4k; }
}
_EOC_

my %PORT = (SMALL => free_port());
my $N = start_nginx($CONF, workers => 1, vars => \%PORT);
ok(poll_until(10, sub { ((response(GET => '/health')->json || {})->{redis} // '') eq 'ok' }),
   'nginx is connected to Redis');
my ($W) = worker_pids($N);
my ($P1, $N1) = @ID{qw(patient1 nurse1)};

sub pong_ok {
    my ($r, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my ($pong, @before) = $r->ping_roundtrip(5);
    ok($pong && !@before, "$name: PING answered, nothing else");
}

# --- the spare message buffer is only taken by a location of its size -----------------------------
{
    my $small = ws_raw(as => 'patient1', port => $PORT{SMALL});
    is($small->status, 101, 'a socket on the 4k server');
    pong_ok($small, "4k location, first message") for 1 .. 3;   # its 4k buffer becomes the spare
    my $big = ws_raw(as => 'patient1');
    is($big->status, 101, 'a socket on the 256k location');
    $big->send_text('{"type":"PING","pad":"' . ('x' x 200_000) . '"}');
    my $f = $big->read_frame(5);
    ok($f && $f->{json} && ($f->{json}{type} // '') eq 'PONG',
       'a 200 KB message on the 256k location after the 4k one freed its buffer: PONG');
    pong_ok($big, '256k location afterwards');
    pong_ok($small, '4k location afterwards');
    $_->close_socket for $small, $big;
    is_deeply([worker_pids($N)], [$W], 'the worker is the same process');
}

# --- ?since= while the socket's first statement waits on a lock -----------------------------------
{
    my $v = new_visit(status => 'EN_ROUTE');
    my @ids = Ahava::Messages::insert_messages(
        map { { visit => $ID{visit1}, from => 'patient1', to => 'nurse1', content => "for the nurse $_" } } 1 .. 150);
    my @due = map { $_->[0] } @{ psql(qq{SELECT m.id FROM messages m, messages s WHERE s.id = '$ids[0]'
        AND m."recipientId" = '$N1' AND (m."createdAt", m.id) > (s."createdAt", s.id)
        ORDER BY m."createdAt", m.id}) };
    my $lock = Ahava::Visits::RowLock->new($v);
    # no other socket of the nurse: her channel is subscribed for this one
    is(redis_numsub($N1), 0, 'nurse1 has no socket yet');
    # the frame in the handshake's packet: read at the takeover, before
    # Redis can answer the SUBSCRIBE
    my $r = ws_raw(as => 'nurse1', query => [since => $ids[0]],
                   body => ws_frame(opcode => 1, payload =>
                       qq({"type":"LOCATION_UPDATE","data":{"visitId":"$v","lat":1,"lng":2}})));
    is($r->status, 101, 'nurse1 with since and her first frame in one packet: 101');
    ok(poll_until(5, sub { pg_lock_waiters() >= 1 }), 'her LOCATION_UPDATE waits on the row lock');
    ok(poll_until(5, sub { redis_numsub($N1) == 1 }), 'meanwhile her channel is subscribed');
    my $early = $r->read_frame(0.3);
    ok(!$early, 'no replay while her statement runs') or diag(explain $early);
    $lock->release;
    my @got;
    while (@got < @due) {
        my $f = $r->read_frame(5) or last;
        last if $f->{eof};
        my $j = $f->{json} or next;
        push @got, $j->{data}{id} if ($j->{type} // '') eq 'NEW_MESSAGE';
        last if ($j->{type} // '') eq 'ERROR';
    }
    is_deeply(\@got, \@due, 'then the replay: every message due, in order, once');
    pong_ok($r, 'nurse1 afterwards');
    is(psql_value(qq{SELECT "gpsCoordinates"->-1->>'lat' FROM visits WHERE id = '$v'}), '1',
       'and her location was stored');
    $r->close_socket;
    is_deeply([worker_pids($N)], [$W], 'the worker is the same process');
}

# --- a client that keeps sending while its statement waits -------------------------------------------
{
    my $v = new_visit(status => 'EN_ROUTE');
    my $lock = Ahava::Visits::RowLock->new($v);
    my $r = ws_raw(as => 'nurse1');
    is($r->status, 101, 'nurse1: 101');
    $r->send_json({ type => 'LOCATION_UPDATE', data => { visitId => $v, lat => 3, lng => 4 } });
    ok(poll_until(5, sub { pg_lock_waiters() >= 1 }), 'her LOCATION_UPDATE waits on the row lock');
    my $before = vm_rss($W);
    # 10 KB PINGs, written without blocking for at most 3 s
    my $sock = $r->sock;
    $sock->blocking(0);
    my ($sent, $buf) = (0, '');
    my $deadline = time + 3;
    while (time < $deadline && $sent < 2000) {
        if (!length $buf) {
            $buf = ws_frame(opcode => 1, payload => sprintf('{"type":"PING","n":%d,"pad":"%s"}',
                                                             $sent, 'y' x 10_000));
        }
        my $n = syswrite($sock, $buf);
        if (defined $n && $n > 0) {
            substr($buf, 0, $n) = '';
            $sent++ if !length $buf;
        } else {
            select(undef, undef, undef, 0.01);
        }
    }
    $sock->blocking(1);
    cmp_ok($sent, '<', 2000, "the server stopped reading: $sent of 2000 messages of 10 KB taken in 3 s");
    my $grew = vm_rss($W) - $before;
    SKIP: {
        skip 'RSS under AddressSanitizer', 1 if $ENV{TEST_NGINX_ASAN};
        cmp_ok($grew, '<', 2048, "the worker's memory did not follow the client (+$grew KiB)");
    }
    $lock->release;
    # the frame begun, if any, goes whole once the server reads again
    if (length $buf) {
        $r->send_bytes($buf);
        $sent++;
    }
    my ($pongs, $inorder) = (0, 1);
    while ($pongs < $sent) {
        my $f = $r->read_frame(10) or last;
        last if $f->{eof};
        my $j = $f->{json} or next;
        $pongs++ if ($j->{type} // '') eq 'PONG';
        last if ($j->{type} // '') eq 'ERROR';
    }
    is($pongs, $sent, 'once the statement is done, every message sent is answered');
    pong_ok($r, 'nurse1 afterwards');
    $r->close_socket;
    is_deeply([worker_pids($N)], [$W], 'the worker is the same process');
}

done_ahava();
