# The embedded stack keeps what it accepted (SPEC §1, README "The two
# commands"): `bin/ahava run` with its own PostgreSQL and Redis, stopped
# with Ctrl-C and started again, and then with both services killed -9:
# every committed message and every queued job is still there (those runs
# keep ahava-worker off, AHAVA_WORKER=0, so the jobs stay queued).  Then
# with the daemon on: it drains the jobs kept, and Ctrl-C stops it too.  Its
# PostgreSQL syncs commits (fsync, synchronous_commit) and its Redis keeps
# an append-only file synced before it answers.
use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);
use POSIX ();
use Ahava::Test;
use Ahava::Messages;

my $TOP = repo_root();
my $DIR = tempdir('ahava-durable-XXXXXX', TMPDIR => 1, CLEANUP => 1);
chmod 0755, $DIR;
my %PORT = (AHAVA_PORT => free_port(), AHAVA_PG_PORT => free_port(), AHAVA_REDIS_PORT => free_port());
my $WORKER_PORT = free_port();
my ($RUN, %ENVF);

sub start_run {
    my (%env) = @_;
    my $pid = fork // die "fork: $!";
    if (!$pid) {
        POSIX::setsid();
        # Ctrl-C is SIGINT; a shell started in the background ignores it
        # unless it is given back its default
        $SIG{INT} = 'DEFAULT';
        $ENV{$_} = $PORT{$_} for keys %PORT;
        $ENV{AHAVA_DATA_DIR} = $DIR;
        $ENV{AHAVA_WORKER} = 0;
        $ENV{AHAVA_WORKER_METRICS} = "127.0.0.1:$WORKER_PORT";
        $ENV{$_} = $env{$_} for keys %env;
        delete @ENV{qw(DATABASE_URL REDIS_URL JWT_SECRET ENCRYPTION_KEY)};
        open(STDOUT, '>>', "$DIR/run.log");
        open(STDERR, '>&', \*STDOUT);
        open(STDIN, '<', '/dev/null');
        exec("$TOP/bin/ahava", 'run') or POSIX::_exit(127);
    }
    $RUN = $pid;
    my $up = poll_until(120, sub {
        my $r = eval { response(GET => '/health', port => $PORT{AHAVA_PORT}, timeout => 2) };
        $r && $r->status == 200;
    });
    ok($up, 'bin/ahava run is up (/health 200)') or diag(`tail -30 $DIR/run.log`);
    for (split /\n/, Ahava::Test::Util::slurp("$DIR/env") // '') {
        $ENVF{$1} = $2 =~ s/^'(.*)'$/$1/r if /^export (\w+)=(.*)$/;
    }
    $Ahava::Test::ENVV{JWT_SECRET} = $ENVF{JWT_SECRET};
}

sub stop_run {
    kill 'INT', $RUN;
    my $t0 = time;
    waitpid($RUN, 0);
    ok(!kill(0, $RUN), sprintf('Ctrl-C: bin/ahava run ended (%.0f s)', time - $t0));
    ok(poll_until(10, sub { !`redis-cli -p $PORT{AHAVA_REDIS_PORT} ping 2>/dev/null` }), '... its Redis stopped');
}

sub sql { my ($q) = @_; my $v = `psql -X -At "$ENVF{DATABASE_URL}" -c "$q" 2>&1`; chomp $v; $v }
sub rcli { my $v = `redis-cli -p $PORT{AHAVA_REDIS_PORT} @_ 2>&1`; chomp $v; $v }

sub send_one {
    my ($text) = @_;
    my $r = json_request(POST => '/api/messages', 'nurse1',
                         { visitId => $ID{visit1}, recipientId => $ID{patient1}, content => $text },
                         port => $PORT{AHAVA_PORT});
    is($r->status, 201, "POST a message ('$text'): 201");
    my $id = (data_of($r) || {})->{id} // 'none';
    ok(poll_until(10, sub { sql('SELECT count(*) FROM ahava_outbox') eq '0' }), '... its outbox rows relayed');
    my $job = rcli(qw(zrange bull:push-notification:prioritized 0 -1));
    my ($last) = (split /\n/, $job)[-1];
    like($last // '', qr/^ahava-\d+-0$/, "... its push job queued ($last)");
    return ($id, $last);
}

# whatever happens, the stack does not outlive the test (TERM runs its
# cleanup: nginx, PostgreSQL and Redis stopped)
END {
    if ($RUN && kill(0, $RUN)) {
        kill 'TERM', $RUN;
        waitpid($RUN, 0);
    }
}

start_run();
is(sql('SHOW fsync') . '/' . sql('SHOW synchronous_commit'), 'on/on', 'PostgreSQL: fsync on, synchronous_commit on');
is(rcli(qw(config get appendonly)) . '|' . rcli(qw(config get appendfsync)), "appendonly\nyes|appendfsync\nalways",
   'Redis: appendonly yes, appendfsync always');
my ($m1, $j1) = send_one('before a restart');

stop_run();
start_run(AHAVA_SEED => 0);
is(sql("SELECT count(*) FROM messages WHERE id = '$m1'"), 1, 'after Ctrl-C and a new start: the message is there');
like(rcli('hget', "bull:push-notification:$j1", 'name'), qr/^send-push$/, '... and its job, still queued')
    and is(rcli('zscore', 'bull:push-notification:prioritized', $j1) ne '' ? 1 : 0, 1, '... in prioritized');

my ($m2, $j2) = send_one('before a crash');
my ($redis_pid) = Ahava::Test::Util::slurp("$DIR/redis/redis.pid") =~ /(\d+)/;
my ($pg_pid) = (Ahava::Test::Util::slurp("$DIR/postgres/data/postmaster.pid") // '') =~ /^(\d+)/;
ok($redis_pid && $pg_pid, "the services' pids ($redis_pid, $pg_pid)");
kill 'KILL', $redis_pid, $pg_pid;
ok(poll_until(10, sub { !kill(0, $redis_pid) && !kill(0, $pg_pid) }), 'Redis and PostgreSQL killed -9');
stop_run();
start_run(AHAVA_SEED => 0);
is(sql("SELECT count(*) FROM messages WHERE id IN ('$m1', '$m2')"), 2, 'after the crash: both messages are there');
is(rcli('hget', "bull:push-notification:$j2", 'name'), 'send-push', "... and the job queued just before it ($j2)");
is(rcli('hget', "bull:push-notification:$j1", 'name'), 'send-push', "... and the first one ($j1)");
stop_run();

# --- with ahava-worker: the jobs kept are drained; Ctrl-C stops the daemon too ----------------------
start_run(AHAVA_SEED => 0, AHAVA_WORKER => 1);
ok(poll_until(15, sub { `curl -fs http://127.0.0.1:$WORKER_PORT/health` =~ /"status":"ok"/ }),
   'ahava-worker is up beside nginx (/health 200)');
ok(poll_until(15, sub { rcli('zscore', 'bull:push-notification:completed', $j1) ne ''
                        && rcli('zscore', 'bull:push-notification:completed', $j2) ne '' }),
   'the jobs kept across the restarts are completed');
my ($worker_pid) = (Ahava::Test::Util::slurp("$DIR/logs/worker.log") // '') =~ /"pid":(\d+)[^\n]*"ahava-worker started"/;
ok($worker_pid && kill(0, $worker_pid), "the daemon's pid ($worker_pid)");
stop_run();
ok(!kill(0, $worker_pid), 'Ctrl-C: ahava-worker stopped');
like(Ahava::Test::Util::slurp("$DIR/logs/worker.log"), qr/"ahava-worker stopped"/, '... after a clean drain');

done_testing();
