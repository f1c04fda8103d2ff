# GET /ws (SPEC §8, issue 10): delivery past one worker and one host, and
# through a Redis restart; ?since= resume without loss or duplicate; reload
# and graceful stop close sockets with 1001.
#
# Two workers with reuseport: the kernel spreads connections over both, so
# the HTTP request that causes an event is served by one worker and the
# recipient's socket is held by the other (each HTTP answer says which
# worker served it: X-Worker).  A second nginx sharing the PostgreSQL and
# Redis is the second host.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Ahava::Test::WS;
use Ahava::Messages qw(json_request data_of);
use Time::HiRes qw(time);

setup();

my $CONF = ws_config(listen => 'reuseport', ws => 'ahava_ws_send_queue 64k;',
                     server => '    add_header   X-Worker $pid always;');

my $N = start_nginx($CONF, workers => 2);
my $N2 = start_nginx($CONF, name => 'second', workers => 1);
for my $n ($N, $N2) {
    ok(poll_until(10, sub { ((response(GET => '/health', nginx => $n)->json || {})->{redis} // '') eq 'ok' }),
       'nginx ' . $n->{name} . ' is connected to Redis');
}

my ($P1, $N1, $V1) = @ID{qw(patient1 nurse1 visit1)};

# nurse1 → patient1 over HTTP on $n; the response
sub post {
    my ($content, %o) = @_;
    return json_request(POST => '/api/messages', $o{as} // 'nurse1',
                        { visitId => $V1, recipientId => $o{to} // $P1, content => $content },
                        nginx => $o{nginx} // $N);
}

# a PING's PONG came back (its JSON), or undef
sub pong_of { my ($pong) = $_[0]->ping_roundtrip(5); return $pong }

# what ?since=$id must replay to $user: the messages to $user after that
# one, oldest first (as the database has them now)
sub due_since {
    my ($user, $id) = @_;
    my $rows = psql(qq{SELECT m.id FROM messages m, messages s WHERE s.id = '$id'}
                    . qq{ AND m."recipientId" = '$user'}
                    . qq{ AND (m."createdAt", m.id) > (s."createdAt", s.id)}
                    . qq{ ORDER BY m."createdAt", m.id});
    return map { $_->[0] } @$rows;
}

# the next frames of $c are NEW_MESSAGEs with these contents, in this order
sub contents_are {
    my ($c, $want, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my @got;
    for (@$want) {
        my $f = $c->next_message(5) or last;
        push @got, ($f->{type} // '') eq 'NEW_MESSAGE' ? $f->{data}{content} : "[$f->{type}]";
    }
    is_deeply(\@got, $want, $name);
}

# --- cross-worker -------------------------------------------------------------------------------------
my @workers = worker_pids($N);
is(scalar @workers, 2, 'two workers');

my $sock = ws_connect(as => 'patient1', name => 'patient1');
ok($sock->opened, 'patient1 connected');
ok(pong_of($sock), 'patient1: PING answered (subscribed before the first event)');
my $owner = tcp_owner_pid($N->port, $sock->local_port);
ok($owner && grep({ $_ == $owner } @workers), "patient1's socket is held by worker $owner");
ok(poll_until(5, sub { redis_numsub($P1) == 1 }), "one worker subscribed to patient1's channel");
{
    # the subscriber cannot be PINGed (hiredis 0.14): TCP keepalive watches it
    my $rport = Ahava::Test::redis()->port;
    my (undef, $out) = Ahava::Test::Util::run_capture(['ss', '-Htnop', 'state', 'established',
                                                       'dst', "127.0.0.1:$rport"]);
    my @mine = grep { /pid=\Q$owner\E,/ } split /\n/, $out;
    ok((grep { /timer:\(keepalive,/ } @mine), "the worker's subscriber connection to Redis has TCP keepalive")
        or diag($out);
}
is(redis_numsub($N1), 0, 'no worker subscribed to nurse1 (no socket of hers)');

my (%served, @sent);
for my $i (1 .. 40) {
    my $r = post("cross-worker $i");
    is($r->status, 201, "message $i: 201") or last;
    push @sent, "cross-worker $i";
    $served{ $r->header('x-worker') // '?' }++;
    last if grep { $_ ne $owner } keys %served and $i >= 4;
}
ok((grep { $_ ne $owner && $_ ne '?' } keys %served),
   'some of the POSTs were served by the other worker') or diag(explain(\%served));
contents_are($sock, \@sent, 'patient1 got every message, in order, from both workers');

# a second socket of patient1 on the other worker: both workers subscribe
my $other;
for (1 .. 30) {
    my $c = ws_connect(as => 'patient1', name => 'patient1-b');
    my $pid = tcp_owner_pid($N->port, $c->local_port);
    if ($pid && $pid != $owner) { $other = $c; last }
    $c->close(1000);
    $c->wait_close(5);
}
ok($other, "a second socket of patient1 on the other worker");
SKIP: {
    skip 'no socket on the other worker', 3 unless $other;
    ok(pong_of($other), 'the second socket answers PING');
    ok(poll_until(5, sub { redis_numsub($P1) == 2 }), 'both workers subscribed to patient1');
    post('to both workers');
    contents_are($_, ['to both workers'], $_->name . ': got it once') for $sock, $other;
    $other->close(1000);
    is(($other->wait_close(5) || {})->{code}, 1000, 'the second socket closed');
    ok(poll_until(5, sub { redis_numsub($P1) == 1 }),
       'its worker unsubscribed once its last socket of patient1 went');
}

# --- cross-host -----------------------------------------------------------------------------------------
{
    my $r = post('from the second host', nginx => $N2);
    is($r->status, 201, 'a message posted on the second nginx: 201');
    contents_are($sock, ['from the second host'], 'it reaches the socket on the first nginx');
    my $s2 = ws_connect(as => 'patient1', nginx => $N2, name => 'patient1@second');
    ok(pong_of($s2), 'a socket of patient1 on the second nginx');
    post('to both hosts');
    contents_are($_, ['to both hosts'], $_->name . ': a message posted on the first host') for $sock, $s2;
    $s2->close(1000);
    $s2->wait_close(5);
}

# --- Redis restart --------------------------------------------------------------------------------------
{
    my $redis = Ahava::Test::redis();
    $redis->stop;
    ok(pong_of($sock), 'Redis stopped: the socket stays open and answers PING');
    $redis->start;
    ok(poll_until(15, sub { redis_numsub($P1) == 1 }),
       'Redis back: the worker subscribed to patient1 again by itself');
    ok(poll_until(15, sub { ((response(GET => '/health')->json || {})->{redis} // '') eq 'ok' }),
       'the publishing connection is back too');
    my $r = post('after the restart');
    is($r->status, 201, 'a message after the restart: 201');
    contents_are($sock, ['after the restart'], 'delivered on the same socket, no reconnect');
    ok(!$sock->closed, 'the socket was never closed');
}

# --- the subscription lost: what was published meanwhile is replayed ------------------------------
# Redis keeps nothing for a subscriber that is away.  Messages that reach the
# database with no live event at all (written directly) stand for the ones
# published while the worker's subscriber was gone: only the replay after the
# lost subscription can bring them, on the same socket.
{
    post('before the loss');
    contents_are($sock, ['before the loss'], "a live message: the socket's last one");
    # a socket that got no message yet replays from its opening
    my $fresh = ws_connect(as => 'nurse1', name => 'nurse1-fresh');
    ok(pong_of($fresh) && poll_until(5, sub { redis_numsub($N1) == 1 }), 'a socket of nurse1, subscribed');
    Ahava::Messages::insert_messages(
        { visit => $V1, from => 'patient1', to => 'nurse1', content => 'before her socket opened',
          at => q{LOCALTIMESTAMP(3) - interval '1 hour'} },
        { visit => $V1, from => 'patient1', to => 'nurse1', content => 'while her socket is open',
          at => q{LOCALTIMESTAMP(3) + interval '5 milliseconds'} });
    Ahava::Messages::insert_messages(map { { visit => $V1, from => 'nurse1', to => 'patient1',
        content => "in the gap $_",
        at => sprintf(q{LOCALTIMESTAMP(3) + interval '%d milliseconds'}, $_) } } 1 .. 3);
    my ($pong, @early) = $sock->ping_roundtrip(5);
    ok($pong && !@early, 'nothing tells the socket of them while its subscription holds');
    my ($killed) = redis_cmd('CLIENT', 'KILL', 'TYPE', 'pubsub');
    cmp_ok($killed, '>=', 1, "the workers' subscriber connections are killed ($killed)");
    ok(poll_until(15, sub { redis_numsub($P1) == 1 }), 'the worker subscribed to patient1 again by itself');
    contents_are($sock, [map { "in the gap $_" } 1 .. 3],
                 'the messages of the gap, replayed on the same socket, oldest first');
    contents_are($fresh, ['while her socket is open'],
                 'a socket with no message yet: the one since it opened, not the older one');
    my ($pong3, @extra) = $fresh->ping_roundtrip(5);
    ok($pong3 && !@extra, '... and nothing else');
    $fresh->close(1000);
    $fresh->wait_close(5);
    my ($pong2, @more) = $sock->ping_roundtrip(5);
    ok($pong2 && !@more, '... each once, and not the one it had before');
    post('after the loss');
    contents_are($sock, ['after the loss'], 'then the live stream again');
    ok(!$sock->closed, 'the socket was never closed');
}

# --- many sockets, few connections: the resumes take turns -----------------------------------------
# One worker with 2 PostgreSQL connections and 2 places in their queue holds
# 20 sockets of patient1.  After the lost subscription each owes a replay;
# they run one at a time (half the pool), not all at once: none is refused
# (a close with 1013), each gets what it missed, once.
{
    my $few = start_nginx(ws_config(http => "ahava_pg_pool_size 2;\nahava_pg_wait_queue 2;"),
                          name => 'few', workers => 1);
    ok(poll_until(10, sub { ((response(GET => '/health', nginx => $few)->json || {})->{redis} // '') eq 'ok' }),
       'few: nginx is connected to Redis');
    my @socks = map { ws_connect(as => 'patient1', nginx => $few, name => "few-$_") } 1 .. 20;
    is(scalar(grep { pong_of($_) } @socks), 20, 'few: 20 sockets of patient1 on its one worker');
    ok(poll_until(5, sub { redis_numsub($P1) == 2 }), 'few: both nginx subscribed to patient1');
    Ahava::Messages::insert_messages(map { { visit => $V1, from => 'nurse1', to => 'patient1',
        content => "missed by many $_",
        at => sprintf(q{LOCALTIMESTAMP(3) + interval '%d milliseconds'}, $_) } } 1 .. 2);
    redis_cmd('CLIENT', 'KILL', 'TYPE', 'pubsub');
    ok(poll_until(15, sub { redis_numsub($P1) == 2 }), 'few: subscribed again');
    my @want = map { "missed by many $_" } 1 .. 2;
    my @short;
    for my $c (@socks) {
        my @got;
        for (@want) {
            my $f = $c->next_message(10) or last;
            push @got, ($f->{type} // '') eq 'NEW_MESSAGE' ? $f->{data}{content} : "[$f->{type}]";
        }
        push @short, $c->name . ': ' . join(', ', @got) unless "@got" eq "@want";
    }
    ok(!@short, 'few: each of the 20 sockets got both missed messages, in order') or diag(join "\n", @short);
    my @closed = grep { $_->closed } @socks;
    ok(!@closed, 'few: none was closed') or diag(join ', ', map { $_->name . ' ' . ($_->closed->{code} // '?') } @closed);
    my @extra = grep { my ($p, @more) = $_->ping_roundtrip(5); !$p || @more } @socks;
    ok(!@extra, 'few: and nothing more on any of them');
    contents_are($sock, \@want, 'the socket on the other nginx got them too');
    $_->close(1000) for @socks;
    $_->wait_close(5) for @socks;
    ok($few->stop, "nginx 'few' exits");
    check_error_log($few);
}

# --- ?since= ------------------------------------------------------------------------------------------------
# messages to patient1 while away (inserted directly, a day old, oldest
# first), then a live one: replayed in order, then the live one
{
    my @ids = Ahava::Messages::insert_messages(
        map { { visit => $V1, from => 'nurse1', to => 'patient1', content => "missed $_" } } 1 .. 250);
    my @due = due_since($P1, $ids[0]);
    cmp_ok(scalar @due, '>=', 249, 'at least the 249 inserted after the first are due');
    my $c = ws_connect(as => 'patient1', query => [since => $ids[0]], name => 'patient1-since');
    ok($c->opened, 'since = the first missed message: 101');
    my @got;
    for (@due) {
        my $f = $c->next_message(5) or last;
        last unless ($f->{type} // '') eq 'NEW_MESSAGE';
        push @got, $f->{data};
    }
    is_deeply([map { $_->{id} } @got], \@due, 'every message due, oldest first, over several pages');
    is_deeply([map { $_->{content} } @got[0 .. 248]], [map { "missed $_" } 2 .. 250],
              'decrypted: the missed ones in the order they were written');
    my ($pong, @before) = $c->ping_roundtrip(5);
    ok($pong && !@before, 'then nothing more');
    post('live after the replay');
    contents_are($c, ['live after the replay'], 'then the live stream');
    $c->close(1000);
    $c->wait_close(5);
    contents_are($sock, ['live after the replay'], 'the other socket got the live one (not the replay)');
}

# a message posted while the replay is paused for a client that does not
# read: it is in the replay (a later page) and was live meanwhile: once
{
    my $big = 'x' x 5000;
    my ($ct) = Ahava::Test::node_encrypt([$big]);
    my @ids = Ahava::Messages::insert_messages(
        map { { visit => $V1, from => 'nurse1', to => 'patient1', ciphertext => $ct } } 1 .. 1200);
    my $raw = ws_raw(as => 'patient1', query => [since => $ids[0]], rcvbuf => 4096);
    is($raw->status, 101, 'since, a client that does not read yet: 101');
    # the replay runs until the socket's buffers and the 64k queue are full
    ok(poll_until(10, sub { (tcp_send_queue($N->port, $raw->local_port) // 0) > 1_000_000 }),
       'the replay filled the socket (and waits for the client to read)');
    my $r = post('posted during the replay');
    is($r->status, 201, 'a message posted meanwhile: 201');
    my $live = data_of($r)->{id};
    my @due = due_since($P1, $ids[0]);
    is($due[-1], $live, 'the live one is the last due');
    my (@order, %seen, $dups);
    while (my $f = $raw->read_frame(10)) {
        last if $f->{eof};
        my $j = $f->{json} or next;
        next unless ($j->{type} // '') eq 'NEW_MESSAGE';
        $dups++ if $seen{ $j->{data}{id} }++;
        push @order, $j->{data}{id};
        last if $j->{data}{id} eq $live;
    }
    is(scalar @order, scalar @due, 'as many frames as messages due (1199 inserted, the live one and older ones)');
    is_deeply(\@order, \@due, 'all of them in order, the live one last');
    ok(!$dups, 'no message twice');
    my ($pong, @before) = $raw->ping_roundtrip(5);
    ok($pong && !grep({ ($_->{json}{type} // '') eq 'NEW_MESSAGE' } @before),
       'no second copy of the live one after it');
    $raw->close_socket;
}

# --- reload and graceful stop: 1001 ---------------------------------------------------------------------
{
    my $old = tcp_owner_pid($N->port, $sock->local_port);
    $N->reload;
    my $closed = $sock->wait_close(10);
    is($closed && $closed->{code}, 1001, 'reload: the socket is closed with 1001 (going away)');
    ok(poll_until(10, sub { !kill(0, $old) }), 'the old worker exits (no socket pins it)');
    my $again = ws_connect(as => 'patient1', name => 'patient1-reconnected');
    ok($again->opened, 'the client reconnects to the new workers');
    post('after the reload');
    contents_are($again, ['after the reload'], 'and gets events there');

    my $s2 = ws_connect(as => 'patient1', nginx => $N2, name => 'patient1@second');
    ok(pong_of($s2), 'a socket on the second nginx');
    my $t0 = time;
    ok($N2->stop(timeout => 10), 'graceful stop (QUIT) of the second nginx ends');
    my $c2 = $s2->wait_close(5);
    is($c2 && $c2->{code}, 1001, 'its socket was closed with 1001');
    cmp_ok(time - $t0, '<', 5, 'at once, not after a timeout');
}

done_ahava();
