# ahava-worker (SPEC §9; README "ahava-worker"): the C daemon that drains
# the queues, checked against the real BullMQ (npm bullmq 6.7.0) both ways,
# a real SMTP server (aiosmtpd), a local HTTP server standing in for Expo,
# and poppler for the PDF; retries, retention, rate limits across two
# daemons, stalled jobs after kill -9, SIGTERM, Redis restarted mid-run.
use strict;
use warnings;
use utf8;
use Test::More;
use JSON::PP ();
use Time::HiRes qw(time sleep);
use Ahava::Test;
use Ahava::Worker;
use Ahava::Test::Util qw(slurp);
use Ahava::Messages ();
use Digest::SHA ();
use Encode ();
use File::Temp ();

setup(private_redis => 1, redis_appendonly => 1);
binmode(Test::More->builder->$_, ':encoding(UTF-8)') for qw(output failure_output todo_output);

my $JSON = JSON::PP->new->utf8->canonical;
my $TOP = repo_root();
my $URL = env_value('REDIS_URL');
my $REDIS = Ahava::Test::redis();
my ($P1, $P2, $N1, $D) = @ID{qw(patient1 patient2 nurse1 doctor)};

sub peer {
    my (@args) = @_;
    my ($rc, $out) = run_capture(['node', "$TOP/t/lib/bullmq-peer.js", @args],
                                 env => { PEER_TIMEOUT_S => 60 });
    die "bullmq-peer @args[0,2] failed ($rc): $out" if $rc;
    my ($line) = grep { /^[\[{n]/ } split /\n/, $out;
    return $JSON->decode($line);
}
sub add_jobs { my ($q, @jobs) = @_; peer('addmany', $URL, $q, $JSON->encode(\@jobs))->{ids} }
sub counts { peer('counts', $URL, $_[0]) }
sub job_of { peer('job', $URL, $_[0], $_[1]) }
sub redis_cli { my ($rc, $out) = run_capture(['redis-cli', '-u', $URL, @_]); chomp $out; $out }
sub obliterate { redis_cli('EVAL', "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end", 0, "bull:$_[0]:*") }

# a local HTTP server standing in for Expo
my $PUSH_LOG = "$TOP/t/servroot-700-worker/push.log";
mkdir "$TOP/t/servroot-700-worker";
unlink $PUSH_LOG;
my $sink_pid = open(my $SINK, '-|', 'node', "$TOP/t/lib/push-sink.js", $PUSH_LOG) or die "push-sink: $!";
my ($sink_port) = (scalar(<$SINK>) // '') =~ /"listening":(\d+)/ or die 'push-sink did not start';
my $EXPO = "http://127.0.0.1:$sink_port/--/api/v2/push/send";

sub push_requests {
    open(my $fh, '<', $PUSH_LOG) or return ();
    return map { $JSON->decode($_) } <$fh>;
}

my %PUSH_OPTS = (attempts => 3, backoff => { type => 'exponential', delay => 2000 }, priority => 5,
                 removeOnComplete => 100, removeOnFail => 10);

# --- a Node Queue's push jobs, drained by ahava-worker, seen by QueueEvents ------------------------
psql(qq{UPDATE users SET "pushTokens" = ARRAY['ExponentPushToken[p1-a]', 'ExponentPushToken[p1-b]'] WHERE id = '$P1'});
psql(qq{UPDATE users SET "pushTokens" = ARRAY['ExponentPushToken[n1-a]'] WHERE id = '$N1'});
psql(qq{UPDATE users SET "pushTokens" = ARRAY[]::text[] WHERE id = '$D'});

my $w = Ahava::Worker->start(name => 'push', env => { EXPO_PUSH_URL => $EXPO });
my $ids = add_jobs('push-notification',
    (map { { name => 'send-push', data => { userId => $P1, title => "New message $_", body => 'From Nurse Dlamini' },
             opts => \%PUSH_OPTS } } 1 .. 7),
    { name => 'send-push', data => { userId => $N1, title => 'Visit cancelled', body => 'By the patient', data => { visitId => 'v1' } },
      opts => \%PUSH_OPTS },
    { name => 'send-push', data => { userId => $D, title => 'No device', body => 'x' }, opts => \%PUSH_OPTS },
    { name => 'send-push', data => { title => 'no user' }, opts => \%PUSH_OPTS });
is(scalar @$ids, 10, 'a Node Queue added ten push jobs');

my $seen = peer('watch', $URL, 'push-notification', 10);
is(scalar keys %{ $seen->{completed} }, 9, 'QueueEvents saw nine completed');
is_deeply([keys %{ $seen->{failed} }], [$ids->[9]], '... and the job without a userId failed');
like($seen->{failed}{ $ids->[9] }, qr/userId/, '... with the reason');
is($seen->{counts}{completed}, 9, 'getJobCounts: 9 completed');
is($seen->{counts}{failed}, 1, 'getJobCounts: 1 failed');
is($seen->{counts}{$_}, 0, "getJobCounts: 0 $_") for qw(active prioritized waiting delayed);
is_deeply($seen->{completed}{ $ids->[0] }, { tokens => 2, sent => 2, pruned => 0, errors => 0 },
          'the return value QueueEvents saw: two tokens sent');
is_deeply($seen->{completed}{ $ids->[8] }, { tokens => 0, sent => 0, pruned => 0, errors => 0 },
          'a user with no token: done, nothing sent');

my @reqs = push_requests();
my @msgs = map { @{ $_->{body} } } @reqs;
is(scalar @msgs, 15, 'Expo got 15 messages: 7 jobs × 2 tokens + 1');
ok(!(grep { @{ $_->{body} } > 100 } @reqs), 'no request carries more than 100 messages');
is($reqs[0]{path}, '/--/api/v2/push/send', 'POSTed to EXPO_PUSH_URL');
is($reqs[0]{headers}{'content-type'}, 'application/json', 'as JSON');
my ($cancel) = grep { $_->{to} eq 'ExponentPushToken[n1-a]' } @msgs;
is_deeply($cancel, { to => 'ExponentPushToken[n1-a]', title => 'Visit cancelled', body => 'By the patient',
                     data => { visitId => 'v1' }, sound => 'default' }, 'the message Expo got');

my $job = job_of('push-notification', $ids->[0]);
is($job->{state}, 'completed', 'getJob: completed');
is($job->{attemptsMade}, 1, 'getJob: attemptsMade 1');
ok($job->{finishedOn} >= $job->{processedOn}, 'getJob: processedOn and finishedOn');
my $failed = job_of('push-notification', $ids->[9]);
is($failed->{attemptsMade}, 1, 'a job with bad data is not retried');

my %lines = map { ($_->{jobId} // '') . '/' . $_->{msg} => $_ } grep { $_->{jobId} } $w->logs;
ok($lines{"$ids->[0]/job completed"}, 'a JSON log line per completed job');
is($lines{"$ids->[9]/job failed"}{queue}, 'push-notification', 'a JSON log line for the failure, with its queue');

my $m = $w->metrics;
is($m->{'ahava_worker_jobs_processed_total{queue="push-notification"}'}, 9, '/metrics: 9 processed');
is($m->{'ahava_worker_jobs_failed_total{queue="push-notification"}'}, 1, '/metrics: 1 failed');
is($m->{'ahava_worker_queue_jobs{queue="push-notification",state="completed"}'}, 9, '/metrics: queue depth by state');
is($m->{'ahava_worker_job_duration_seconds_count{queue="push-notification"}'}, 10, '/metrics: the duration histogram');
my ($hc, $h) = $w->health;
is($hc, 200, '/health: 200');
is($h->{redis}, 'up', '/health: redis up');
is($h->{postgres}, 'up', '/health: postgres up');

is($w->term, 0, 'SIGTERM: exit 0');

# --- Expo's answers: DeviceNotRegistered prunes the token, 503 and 429 are retried -----------------
psql(qq{UPDATE users SET "pushTokens" = ARRAY['ExponentPushToken[p2-unregistered]', 'ExponentPushToken[p2-ok]'] WHERE id = '$P2'});
psql(qq{UPDATE users SET "pushTokens" = ARRAY['ExponentPushToken[n1-busy]'] WHERE id = '$N1'});
my %FAST = (%PUSH_OPTS, backoff => { type => 'exponential', delay => 200 });
$w = Ahava::Worker->start(name => 'push2', env => { EXPO_PUSH_URL => $EXPO });
$ids = add_jobs('push-notification',
    { name => 'send-push', data => { userId => $P2, title => 'Visit on its way', body => 'Nurse en route' }, opts => \%FAST },
    { name => 'send-push', data => { userId => $N1, title => 'Busy endpoint', body => 'x' }, opts => \%FAST });
$seen = peer('watch', $URL, 'push-notification', 12);
is_deeply($seen->{completed}{ $ids->[0] }, { tokens => 2, sent => 1, pruned => 1, errors => 0 },
          'DeviceNotRegistered: one sent, one pruned');
is(psql_value(qq{SELECT array_to_string("pushTokens", ',') FROM users WHERE id = '$P2'}), 'ExponentPushToken[p2-ok]',
   '... and the unregistered token is gone from the user');
ok($seen->{completed}{ $ids->[1] }, 'a 503 from Expo: retried, then completed');
is(job_of('push-notification', $ids->[1])->{attemptsMade}, 2, '... on the second attempt');
like(job_of('push-notification', $ids->[1])->{stacktrace}[0], qr/503/, '... the first failure in its stacktrace');

# MessageRateExceeded: retried when no device got it; completed when one did
psql(qq{UPDATE users SET "pushTokens" = ARRAY['ExponentPushToken[p2-ok]', 'ExponentPushToken[p2-ratelimited]'] WHERE id = '$P2'});
psql(qq{UPDATE users SET "pushTokens" = ARRAY['ExponentPushToken[n1-ratelimited]'] WHERE id = '$N1'});
$ids = add_jobs('push-notification',
    { name => 'send-push', data => { userId => $P2, title => 'Half', body => 'x' }, opts => \%FAST },
    { name => 'send-push', data => { userId => $N1, title => 'None', body => 'x' }, opts => \%FAST });
$seen = peer('watch', $URL, 'push-notification', 14);
is_deeply($seen->{completed}{ $ids->[0] }, { tokens => 2, sent => 1, pruned => 0, errors => 1 },
          'MessageRateExceeded on one device of two: completed, the other counted (no resend to the first)');
is(job_of('push-notification', $ids->[0])->{attemptsMade}, 1, '... on its first attempt');
like($seen->{failed}{ $ids->[1] }, qr/MessageRateExceeded/, 'on the only device: retried, then failed');
is(job_of('push-notification', $ids->[1])->{attemptsMade}, 3, '... after its three attempts');
is($w->term, 0, 'SIGTERM: exit 0');

# one job's message that Expo refuses (the whole request: 400) fails no
# other job of the same request: added before the worker starts, the two
# are one batch, one request
psql(qq{UPDATE users SET "pushTokens" = ARRAY['ExponentPushToken[p2-ok]'] WHERE id = '$P2'});
psql(qq{UPDATE users SET "pushTokens" = ARRAY['ExponentPushToken[n1-rejected]'] WHERE id = '$N1'});
$ids = add_jobs('push-notification',
    { name => 'send-push', data => { userId => $P2, title => 'Shared request', body => 'x' }, opts => \%FAST },
    { name => 'send-push', data => { userId => $N1, title => 'Refused', body => 'x' }, opts => \%FAST });
$w = Ahava::Worker->start(name => 'push-shared', env => { EXPO_PUSH_URL => $EXPO });
$seen = peer('watch', $URL, 'push-notification', 16);
my ($shared) = grep { my @to = map { $_->{to} } @{ ref $_->{body} eq 'ARRAY' ? $_->{body} : [] };
                      (grep { /p2-ok/ } @to) && (grep { /n1-rejected/ } @to) } push_requests();
ok($shared, 'the two jobs went to Expo in one request, refused with 400');
is_deeply($seen->{completed}{ $ids->[0] }, { tokens => 1, sent => 1, pruned => 0, errors => 0 },
          '... the job without fault: sent again on its own, completed');
like($seen->{failed}{ $ids->[1] } // '', qr/400/, '... the job whose message is refused: failed');
is(job_of('push-notification', $ids->[1])->{attemptsMade}, 1, '... at once (a 400 is not retried)');
is($w->term, 0, 'SIGTERM: exit 0');

# --- the push tokens cache: exact, because migration 008's trigger tells every change ------------
obliterate('push-notification');
psql(qq{UPDATE users SET "pushTokens" = ARRAY['ExponentPushToken[p1-cache-a]'] WHERE id = '$P1'});
$w = Ahava::Worker->start(name => 'push-cache', env => { EXPO_PUSH_URL => $EXPO });
my $pushed = 0;
sub push_p1 {       # one push to $P1, waited for; the tokens Expo got for it
    my ($title) = @_;
    add_jobs('push-notification', { name => 'send-push', data => { userId => $P1, title => $title, body => 'b' },
                                    opts => \%PUSH_OPTS });
    peer('watch', $URL, 'push-notification', ++$pushed);
    return join ',', map { $_->{to} } grep { $_->{title} eq $title } map { @{ $_->{body} } } push_requests();
}
sub cache_counts { my $m = $w->metrics; map { $m->{"ahava_worker_push_token_cache_total{result=\"$_\"}"} } qw(hit miss) }
sub listening { $w->metrics->{ahava_worker_push_token_cache_listening} // -1 }
# this worker's listener, in this test's database
my $LISTENER = q{FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'ahava-worker-tokens'};
ok(poll_until(10, sub { listening() == 1 }), 'the cache listens for changes (its heartbeat came back)');
is(push_p1('cache 1'), 'ExponentPushToken[p1-cache-a]', 'cache: the first push reads the tokens');
is(push_p1('cache 2'), 'ExponentPushToken[p1-cache-a]', '... the second too');
is_deeply([cache_counts()], [1, 1], '... from the cache: 1 miss, then 1 hit');
is($w->metrics->{ahava_worker_push_token_cache_capacity}, 10000, '/metrics: the capacity (push_token_cache)');
psql(qq{UPDATE users SET "pushTokens" = ARRAY['ExponentPushToken[p1-cache-b]'] WHERE id = '$P1'});
is(push_p1('cache 3'), 'ExponentPushToken[p1-cache-b]', 'tokens changed by another writer: the next push has the new ones');
is_deeply([cache_counts()], [1, 2], '... read again (a miss)');
psql(qq{UPDATE users SET "isActive" = false WHERE id = '$P1'});
is(push_p1('cache 4'), '', 'the user deactivated: nothing sent');
psql(qq{UPDATE users SET "isActive" = true WHERE id = '$P1'});
is(push_p1('cache 5'), 'ExponentPushToken[p1-cache-b]', '... activated again: sent');
is_deeply([cache_counts()], [1, 4], '... each change read again');

# the listening connection killed: what it would have heard is lost, so the cache starts again empty
is(psql_value("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) $LISTENER"), 1,
   'the cache listens on one connection of its own (killed now)');
psql(qq{UPDATE users SET "pushTokens" = ARRAY['ExponentPushToken[p1-cache-d]'] WHERE id = '$P1'});
is(push_p1('cache 6'), 'ExponentPushToken[p1-cache-d]', '... a change made meanwhile is not missed');
ok(poll_until(10, sub { $w->log_like(qr/"why":"an error came on its connection","error":"terminating connection[^"]*"|"why":"its connection was lost"/) }),
   '... the log says the cache was emptied, and why') or diag $w->log_text;
ok(poll_until(10, sub { listening() == 1 && psql_value("SELECT count(*) $LISTENER") == 1 }),
   '... it listens again by itself');
my ($h0) = cache_counts();
is(push_p1('cache 7'), 'ExponentPushToken[p1-cache-d]', '... and fills the cache again');
is(push_p1('cache 8'), 'ExponentPushToken[p1-cache-d]', '... and serves from it:');
is((cache_counts())[0], $h0 + 1, '... a hit');
ok(!$w->log_like(qr/trigger users_push_tokens_notify/), 'no warning about the trigger');

# the trigger disabled under a running worker: its heartbeat sees it, the cache goes unused
# (enabled again at the end, even if this script dies before)
END { eval { psql(q{ALTER TABLE users ENABLE TRIGGER users_push_tokens_notify}) } }
psql(q{ALTER TABLE users DISABLE TRIGGER users_push_tokens_notify});
ok(poll_until(15, sub { listening() == 0 }), 'the trigger disabled: the cache stops within a heartbeat');
my @counts = cache_counts();
psql(qq{UPDATE users SET "pushTokens" = ARRAY['ExponentPushToken[p1-cache-c]'] WHERE id = '$P1'});
is(push_p1('cache 9'), 'ExponentPushToken[p1-cache-c]', '... pushes go out with the tokens of the moment, unheard of');
is_deeply([cache_counts()], \@counts, '... read from PostgreSQL, the cache unused');
is(scalar(grep { $_->{level} eq 'warn' && $_->{msg} =~ /trigger users_push_tokens_notify is missing or disabled/ }
           $w->logs), 1, '... and the log says why, once') or diag $w->log_text;
ok(poll_until(10, sub { psql_value("SELECT count(*) $LISTENER") == 0 }), '... and it no longer listens');
psql(q{ALTER TABLE users ENABLE TRIGGER users_push_tokens_notify});
is($w->term, 0, 'SIGTERM: exit 0');

# --- retries: order and timing of the backoff, retries-exhausted, then FAILED --------------------
sub stream_events { @{ peer('events', $URL, $_[0], $_[1] // ()) } }

my $down = free_port();
$w = Ahava::Worker->start(name => 'email-down', env => { SMTP_URL => "smtp://127.0.0.1:$down" });
$ids = add_jobs('email', { name => 'send-email',
    data => { to => 'zoe@example.com', subject => 'Visit cancelled', html => '<p>Cancelled</p>' },
    opts => { attempts => 3, backoff => { type => 'exponential', delay => 300 }, priority => 3 } });
$seen = peer('watch', $URL, 'email', 1);
like($seen->{failed}{ $ids->[0] }, qr/connect|Couldn't|refused/i, 'SMTP down: failed for good after its attempts');
my @ev = stream_events('email', $ids->[0]);
my @active = map { $_->{ms} } grep { $_->{event} eq 'active' } @ev;
is(scalar @active, 3, 'three attempts');
cmp_ok($active[1] - $active[0], '>=', 300, 'the first retry waited 300 ms (exponential from 300)');
cmp_ok($active[2] - $active[1], '>=', 600, 'the second waited 600 ms');
cmp_ok($active[2] - $active[1], '<', 2500, '... and not much more');
is_deeply([map { $_->{event} } @ev],
          [qw(added waiting active delayed waiting active delayed waiting active failed retries-exhausted)],
          'the events stream, in BullMQ\'s order');
my $fj = job_of('email', $ids->[0]);
is($fj->{attemptsMade}, 3, 'attemptsMade 3');
is(scalar @{ $fj->{stacktrace} }, 3, 'three failures in its stacktrace');
is($w->metrics->{'ahava_worker_jobs_retried_total{queue="email"}'}, 2, '/metrics: two retries');
is($w->term, 0, 'SIGTERM: exit 0');

# --- retention: removeOnComplete / removeOnFail counts ---------------------------------------------
obliterate('push-notification');
$w = Ahava::Worker->start(name => 'retention', env => { EXPO_PUSH_URL => $EXPO });
my %KEEP = (attempts => 1, removeOnComplete => 3, removeOnFail => 2);
$ids = add_jobs('push-notification',
    (map { { name => 'send-push', data => { userId => $P1, title => "t$_", body => 'b' }, opts => \%KEEP } } 1 .. 6),
    (map { { name => 'send-push', data => { title => "bad $_" }, opts => \%KEEP } } 1 .. 4));
$seen = peer('watch', $URL, 'push-notification', 10);
is($seen->{counts}{completed}, 3, 'removeOnComplete 3: three completed kept');
is($seen->{counts}{failed}, 2, 'removeOnFail 2: two failed kept');
is(scalar(grep { redis_cli('EXISTS', "bull:push-notification:$_") } @$ids[0 .. 5]), 3,
   'the hashes of the three completed jobs not kept are deleted');
$w->term;

# --- the rate limit holds across two daemons ------------------------------------------------------
obliterate('email');
my @rate = ('email.rate_max=4', 'email.rate_duration_ms=1500', 'queues=email');
my @two = map { Ahava::Worker->start(name => "rate$_", opts => \@rate) } 1 .. 2;
$ids = add_jobs('email', map { { name => 'send-email',
    data => { to => "p$_\@example.com", subject => "s$_", html => '<p>x</p>' }, opts => { attempts => 1 } } } 1 .. 12);
$seen = peer('watch', $URL, 'email', 12);
is(scalar keys %{ $seen->{completed} }, 12, 'twelve emails completed (the mail sink)');
my $jobs = peer('jobs', $URL, 'email')->{email};
my @starts = sort { $a <=> $b } map { $_->{processedOn} } @$jobs;
my %by = map { ($_->{processedBy} // '') => 1 } @$jobs;
diag('started by: ' . join(', ', map { my $n = $_; "$n: " . scalar(grep { ($_->{processedBy} // '') eq $n } @$jobs) } sort keys %by));
cmp_ok($starts[4] - $starts[0], '>=', 1450, 'the 5th job started a window (1.5 s) after the 1st: 4 per window across both');
cmp_ok($starts[8] - $starts[4], '>=', 1450, 'the 9th a window after the 5th');
is(scalar keys %by, 2, 'both daemons took jobs');
my @sunk = map { glob($_->dir . '/data/mail/*.eml') } @two;
is(scalar @sunk, 12, 'the mail sinks hold the twelve messages');
is($_->term, 0, 'SIGTERM: exit 0') for @two;

# --- stalled: a daemon kill -9ed mid-job; another takes the job over ------------------------------
obliterate('push-notification');
psql(qq{UPDATE users SET "pushTokens" = ARRAY['ExponentPushToken[n1-slow-1]'] WHERE id = '$N1'});
my @fastlock = ('lock_duration_ms=2000', 'stalled_interval_ms=1000', 'queues=push-notification');
my $a = Ahava::Worker->start(name => 'stall-a', env => { EXPO_PUSH_URL => $EXPO }, opts => \@fastlock);
$ids = add_jobs('push-notification', { name => 'send-push', data => { userId => $N1, title => 'slow', body => 'x' }, opts => \%PUSH_OPTS });
ok(poll_until(10, sub { grep { $_->{body}[0]{to} =~ /slow-1/ } push_requests() }), 'daemon A is sending the job');
$a->kill9;
my $b = Ahava::Worker->start(name => 'stall-b', env => { EXPO_PUSH_URL => $EXPO }, opts => \@fastlock);
$seen = peer('watch', $URL, 'push-notification', 1);
ok($seen->{completed}{ $ids->[0] }, 'the job A held is completed by B');
my $sj = job_of('push-notification', $ids->[0]);
like($sj->{processedBy}, qr/:\Q${\ $b->pid }\E$/, '... processed by B');
ok(grep({ $_->{event} eq 'stalled' } stream_events('push-notification', $ids->[0])), '... after a stalled event');
is($seen->{counts}{active}, 0, 'nothing left active');

# --- SIGTERM: the job in hand is finished, no new one is taken -----------------------------------
psql(qq{UPDATE users SET "pushTokens" = ARRAY['ExponentPushToken[n1-slow-2]'] WHERE id = '$N1'});
$ids = add_jobs('push-notification', { name => 'send-push', data => { userId => $N1, title => 'slow', body => 'x' }, opts => \%PUSH_OPTS });
ok(poll_until(10, sub { grep { $_->{body}[0]{to} =~ /slow-2/ } push_requests() }), 'B is sending a slow job');
$b->signal('TERM');
my $later = add_jobs('push-notification', { name => 'send-push', data => { userId => $P1, title => 'after', body => 'x' }, opts => \%PUSH_OPTS });
is($b->wait_exit(20), 0, 'SIGTERM: B exits 0 once the job is done');
is(job_of('push-notification', $ids->[0])->{state}, 'completed', 'the job in hand was completed');
is(job_of('push-notification', $later->[0])->{state}, 'prioritized', 'a job added after SIGTERM was not taken');
ok(!grep({ $_->{event} eq 'stalled' } stream_events('push-notification', $ids->[0])), 'the finished job never stalled');

# --- Redis restarted mid-run ----------------------------------------------------------------------
psql(qq{UPDATE users SET "pushTokens" = ARRAY['ExponentPushToken[n1-slow-3]'] WHERE id = '$N1'});
$w = Ahava::Worker->start(name => 'redis-restart', env => { EXPO_PUSH_URL => $EXPO });
$seen = peer('watch', $URL, 'push-notification', 3);
ok($seen->{completed}{ $later->[0] }, 'the job left by B is completed by the next daemon');
$ids = add_jobs('push-notification', { name => 'send-push', data => { userId => $N1, title => 'slow', body => 'x' }, opts => \%PUSH_OPTS });
ok(poll_until(10, sub { grep { $_->{body}[0]{to} =~ /slow-3/ } push_requests() }), 'a job is in hand');
ok($REDIS->stop, 'Redis stopped (its append-only file kept)');
ok(poll_until(10, sub { $w->health_code == 503 }), '/health: 503 while Redis is down');
ok(poll_until(10, sub { $w->log_like(qr/"redis unreachable"|"queue step failed"/) }), 'the outage is logged');
ok($REDIS->start, 'Redis started again');
ok(poll_until(15, sub { $w->health_code == 200 }), '/health: 200 again');
$seen = peer('watch', $URL, 'push-notification', 4);
ok($seen->{completed}{ $ids->[0] }, 'the job in hand during the outage is completed after it');
is(job_of('push-notification', $ids->[0])->{attemptsMade}, 1, '... once');
$ids = add_jobs('push-notification', map { { name => 'send-push', data => { userId => $P1, title => "after $_", body => 'x' }, opts => \%PUSH_OPTS } } 1 .. 5);
$seen = peer('watch', $URL, 'push-notification', 9);
is(scalar(grep { $seen->{completed}{$_} } @$ids), 5, 'jobs added after the restart are drained');
my $outage_lines = () = $w->log_text =~ /"redis unreachable"|"queue step failed"/g;
cmp_ok($outage_lines, '<=', 12, "the outage took $outage_lines log lines, not one per retry");
is($w->term, 0, 'SIGTERM: exit 0');

# --- a lock lost while the job runs: its result is refused and not counted; the job runs again -----
{
    obliterate('push-notification');
    psql(qq{UPDATE users SET "pushTokens" = ARRAY['ExponentPushToken[n1-slow-lost]'] WHERE id = '$N1'});
    my $l = Ahava::Worker->start(name => 'lock-lost', env => { EXPO_PUSH_URL => $EXPO }, opts => \@fastlock);
    my $lid = add_jobs('push-notification', { name => 'send-push', data => { userId => $N1, title => 'slow', body => 'x' }, opts => \%PUSH_OPTS });
    ok(poll_until(10, sub { grep { $_->{body}[0]{to} =~ /slow-lost/ } push_requests() }), 'lock lost: the job is being sent');
    is(redis_cli('DEL', "bull:push-notification:$lid->[0]:lock"), 1, 'lock lost: its lock deleted');
    my $lm;
    ok(poll_until(15, sub { $lm = $l->metrics;
                            ($lm->{'ahava_worker_jobs_lock_lost_total{queue="push-notification"}'} // 0) >= 1 }),
       'lock lost: the first result is refused (lock_lost_total 1)');
    ok(poll_until(15, sub { job_of('push-notification', $lid->[0])->{state} eq 'completed' }), 'lock lost: the job is completed by its next run');
    $lm = $l->metrics;
    is($lm->{'ahava_worker_jobs_processed_total{queue="push-notification"}'}, 1, 'lock lost: processed_total counts the accepted result alone');
    is($lm->{'ahava_worker_jobs_lock_lost_total{queue="push-notification"}'}, 1, 'lock lost: lock_lost_total 1');
    ok($l->log_like(qr/"job result discarded: its lock was lost"/), 'lock lost: logged');
    is($l->term, 0, 'lock lost: SIGTERM, exit 0');
}

# --- email: SMTP with STARTTLS and AUTH, multipart/alternative; smtps://; a 550 ---------------------
my $SV = "$TOP/t/servroot-700-worker";
run_capture(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', "$SV/smtp.key",
             '-out', "$SV/smtp.crt", '-days', '2', '-subj', '/CN=localhost',
             '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost']);
sub smtp_server {
    my ($dir, @args) = @_;
    File::Path::remove_tree($dir);
    File::Path::make_path($dir);
    my $port = free_port();
    my $pid = open(my $fh, '-|', '/usr/bin/python3', "$TOP/t/lib/smtp-server.py", '--port', $port, '--dir', $dir,
                   '--tls-cert', "$SV/smtp.crt", '--tls-key', "$SV/smtp.key", @args) or die "smtp-server: $!";
    (scalar(<$fh>) // '') =~ /"listening"/ or die 'smtp-server did not start';
    return ($port, $pid, $fh);
}
sub parse_eml {
    my ($file) = @_;
    my ($rc, $out) = run_capture(['/usr/bin/python3', '-c', <<'_PY_', $file]);
import email, email.policy, json, sys
m = email.message_from_bytes(open(sys.argv[1], 'rb').read(), policy=email.policy.default)
parts = {p.get_content_type(): p.get_content() for p in m.walk() if not p.is_multipart()}
print(json.dumps({'type': m.get_content_type(), 'subject': str(m['subject']), 'from': str(m['from']),
                  'to': str(m['to']), 'date': str(m['date'] or ''), 'message_id': str(m['message-id'] or ''),
                  'parts': parts}))
_PY_
    die "parse $file: $out" if $rc;
    return $JSON->decode($out);
}
use File::Path ();
my ($sport, $spid, $sfh) = smtp_server("$SV/smtp-mail", '--starttls-required', '--auth', 'ahava:s3cr%et', '--reject-rcpt', 'nobody@example.com');
$w = Ahava::Worker->start(name => 'email', env => { SMTP_URL => "smtp://ahava:s3cr%25et\@127.0.0.1:$sport",
                                                    SMTP_FROM => 'Ahava <no-reply@ahava.test>', SMTP_CA_FILE => "$SV/smtp.crt" });
my $subject = 'Visit cancelled — Zoë Ngcobo, Tuesday 14:00, with Nurse Şükrü Çelik (home visit)';
my $html = "<p>Your visit of <b>Tuesday</b> was cancelled by the patient.</p><p>Zoë &amp; Şükrü</p>";
obliterate('email');
$ids = add_jobs('email',
    { name => 'send-email', data => { to => 'zoe@example.com', subject => $subject, html => $html,
                                      text => "Your visit of Tuesday was cancelled by the patient.\nZoë & Şükrü" },
      opts => { attempts => 3, backoff => { type => 'exponential', delay => 2000 }, priority => 3 } },
    { name => 'send-email', data => { to => 'nobody@example.com', subject => 'x', html => '<p>x</p>' },
      opts => { attempts => 3, backoff => { type => 'exponential', delay => 2000 }, priority => 3 } });
$seen = peer('watch', $URL, 'email', 2);
ok($seen->{completed}{ $ids->[0] }, 'the email was sent');
like($seen->{failed}{ $ids->[1] }, qr/550/, 'a 550 recipient: failed');
is(job_of('email', $ids->[1])->{attemptsMade}, 1, '... at once, not retried (a permanent refusal)');
my @eml = glob("$SV/smtp-mail/*.eml");
is(scalar @eml, 1, 'the SMTP server received one message');
my ($meta) = map { $JSON->decode(scalar slurp($_)) } glob("$SV/smtp-mail/*.json");
ok($meta->{tls}, 'over STARTTLS');
is($meta->{auth_user}, 'ahava', 'after AUTH (a password with % in it, from the URL)');
is($meta->{mail_from}, 'no-reply@ahava.test', 'MAIL FROM: the address of SMTP_FROM');
is_deeply($meta->{rcpt_tos}, ['zoe@example.com'], 'RCPT TO: the job\'s recipient');
my $mail = parse_eml($eml[0]);
is($mail->{type}, 'multipart/alternative', 'multipart/alternative');
is($mail->{subject}, $subject, 'the non-ASCII subject decodes to the original');
like($mail->{date}, qr/^\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d \+0000$/, 'a Date header');
like($mail->{message_id}, qr/^<[^@>]+\@ahava\.test>$/, 'a Message-ID');
like($mail->{parts}{'text/plain'}, qr/^Your visit of Tuesday was cancelled by the patient\.\r?\nZoë & Şükrü\s*$/, 'the text part');
is($mail->{parts}{'text/html'} =~ s/\s+$//r, $html, 'the HTML part');
my @received = grep { $_->{msg} eq 'job completed' } $w->logs;
ok(!grep({ $_->{msg} =~ /Zo/ || ($_->{error} // '') =~ /s3cr/ } $w->logs), 'no body or password in the log');
$w->term;
kill 'TERM', $spid; close $sfh;

($sport, $spid, $sfh) = smtp_server("$SV/smtps-mail", '--implicit-tls', '--auth', 'u:p');
$w = Ahava::Worker->start(name => 'smtps', env => { SMTP_URL => "smtps://u:p\@127.0.0.1:$sport", SMTP_CA_FILE => "$SV/smtp.crt" });
$ids = add_jobs('email', { name => 'send-email', data => { to => 'n@example.com', subject => 'Assigned', html => '<p>A visit</p>' }, opts => { attempts => 1 } });
$seen = peer('watch', $URL, 'email', 3);
ok($seen->{completed}{ $ids->[0] }, 'smtps:// (TLS from the start): sent');
($meta) = map { $JSON->decode(scalar slurp($_)) } glob("$SV/smtps-mail/*.json");
ok($meta->{tls} && $meta->{auth_user} eq 'u', '... over TLS, authenticated');
my $derived = parse_eml((glob("$SV/smtps-mail/*.eml"))[0]);
like($derived->{parts}{'text/plain'}, qr/^A visit\s*$/, 'no text given: the text part is derived from the HTML');
$w->term;
kill 'TERM', $spid; close $sfh;

# credentials and a server that offers no STARTTLS: never AUTH in clear
{
    my $dir = "$SV/plain-mail";
    File::Path::remove_tree($dir);
    File::Path::make_path($dir);
    my $port = free_port();
    my $pid = open(my $fh, '-|', '/usr/bin/python3', "$TOP/t/lib/smtp-server.py", '--port', $port,
                   '--dir', $dir, '--auth', 'u:p') or die "smtp-server: $!";
    (scalar(<$fh>) // '') =~ /"listening"/ or die 'smtp-server did not start';
    $w = Ahava::Worker->start(name => 'smtp-plain', env => { SMTP_URL => "smtp://u:p\@127.0.0.1:$port" });
    $ids = add_jobs('email', { name => 'send-email', data => { to => 'p@example.com', subject => 'Plain', html => '<p>x</p>' },
                               opts => { attempts => 1 } });
    $seen = peer('watch', $URL, 'email', 4);
    like($seen->{failed}{ $ids->[0] } // '', qr/SSL|TLS/i,
         'smtp:// with a password, the server offers no STARTTLS: failed, nothing sent in clear');
    is(scalar(my @none = glob("$dir/*")), 0, '... the server received no message');
    $w->term;
    kill 'TERM', $pid;
    close $fh;
}

$w = Ahava::Worker->start(name => 'mail-sink');
$ids = add_jobs('email', { name => 'send-email', data => { to => 'z@example.com', subject => 'Sink', html => '<p>Read me</p>' }, opts => { attempts => 1 } });
$seen = peer('watch', $URL, 'email', 5);
my @sink = glob($w->dir . '/data/mail/*.eml');
is(scalar @sink, 1, 'no SMTP_URL: the message is a file under AHAVA_DATA_DIR/mail');
is(parse_eml($sink[0])->{subject}, 'Sink', '... a whole message a person can read');
$w->term;

# --- the export flow end to end: POST export → PDF downloadable by its owner ------------------------
my $DATA = File::Temp::tempdir('ahava-exports-XXXXXX', TMPDIR => 1, CLEANUP => 1);
mkdir "$DATA/uploads";
mkdir "$DATA/uploads/$_" for qw(images documents exports);
chmod 0777, $DATA, map { "$DATA/uploads/$_" } '', qw(images documents exports);
my $nginx = start_nginx(<<'_EOC_', workers => 1, vars => { DATA => $DATA });
ahava_database          env:DATABASE_URL;
ahava_redis             env:REDIS_URL;
ahava_jwt_secret        env:JWT_SECRET;
ahava_encryption_key    env:ENCRYPTION_KEY;
ahava_upload_root       $TEST_NGINX_DATA/uploads;

server {
    listen       127.0.0.1:$TEST_NGINX_SERVER_PORT;
    server_name  _;
    error_page 400 401 403 404 405 413 414 429 494 500 501 502 503 504 505 /_ahava_error;
    location /api/visits { ahava_visits; }
    location /api/exports/ { ahava_visits; }
    location /uploads/ {
        ahava_download;
        root              $TEST_NGINX_DATA;
        disable_symlinks  on;
    }
    location = /_ahava_error { internal; ahava_error_page; }
}
_EOC_

my $V = $ID{visit1};
my ($vp, $vn, $vd) = @{ psql(qq{SELECT b."patientId", v."nurseId", v."doctorId" FROM visits v
                                JOIN bookings b ON b.id = v."bookingId" WHERE v.id = '$V'})->[0] };
psql(Encode::encode('UTF-8', qq{UPDATE users SET "firstName" = 'Zoë', "lastName" = 'Ngcobo' WHERE id = '$vp'}));
psql(Encode::encode('UTF-8', qq{UPDATE users SET "firstName" = 'Şükrü', "lastName" = 'Çelik' WHERE id = '$vn'}));
my @words = map { sprintf('word%04d', $_) } 1 .. 1800;
my $report = join(' ', 'Wound dressed; patient comfortable.', @words, 'End of report.');
my ($ct) = node_encrypt([$report]);
psql(qq{UPDATE visits SET "nurseReport" = '$ct', "doctorReview" = 'Good care, follow up in a week.',
        "doctorRating" = 4, "gpsCoordinates" = '[{"lat":-26.2041,"lng":28.0473,"timestamp":"2026-11-30T08:00:00.000Z"},
        {"lat":-26.1952,"lng":28.0340,"timestamp":"2026-11-30T08:20:00.000Z"}]' WHERE id = '$V'});

my $sub = Ahava::Messages::Subscriber->new($REDIS->port);
$w = Ahava::Worker->start(name => 'pdf', env => { AHAVA_DATA_DIR => $DATA }, opts => ['queues=pdf-export']);
my $t0 = time;
my $r = request(POST => "/api/visits/$V/export", as => $vp, headers => { 'Content-Type' => 'application/json' }, body => '{}');
is($r->status, 202, 'POST /api/visits/:id/export: 202');
my $eid = $r->json->{data}{exportJobId};
my $row;
ok(poll_until(20, sub { $row = request(GET => "/api/exports/$eid", as => $vp)->json->{data};
                        ($row->{status} // '') =~ /COMPLETED|FAILED/ }), 'the export finished');
is($row->{status}, 'COMPLETED', '... COMPLETED');
diag(sprintf('export done %.1f s after the POST', time - $t0));
like($row->{fileUrl}, qr{^/uploads/exports/[^/]+\.pdf$}, '... with its fileUrl');
my $dl = request(GET => $row->{fileUrl}, as => $vp);
is($dl->status, 200, 'the owner downloads the PDF');
like($dl->header('content-type'), qr{application/pdf}, '... as application/pdf');
is(length $dl->raw, $row->{fileSize}, '... fileSize bytes');
is(Digest::SHA::sha256_hex($dl->raw), $row->{checksum}, '... whose sha256 is the row\'s checksum');
is(request(GET => $row->{fileUrl}, as => $vn)->status, 404, 'another participant: 404 (not the owner of the export)');
my ($ready) = grep { ($_->{payload}{type} // '') eq 'EXPORT_READY' }
              $sub->wait_for(5, sub { grep { ($_->{payload}{type} // '') eq 'EXPORT_READY' } @_ });
ok($ready, 'EXPORT_READY published');
is($ready->{user}, $vp, '... to the owner');
is_deeply([@{ $ready->{payload}{data} }{qw(exportJobId fileUrl checksum)}], [$eid, $row->{fileUrl}, $row->{checksum}],
          '... with the export id, the file and its checksum');

my $pdf = "$DATA$row->{fileUrl}";
my ($irc, $info) = run_capture(['pdfinfo', $pdf]);
my ($pages) = $info =~ /^Pages:\s+(\d+)/m;
cmp_ok($pages, '>', 1, "pdfinfo: a valid PDF of $pages pages");
my ($trc, $text) = run_capture(['pdftotext', '-enc', 'UTF-8', $pdf, '-']);
$text = Encode::decode('UTF-8', $text);
like($text, qr/Zoë Ngcobo/, 'the patient\'s name, with its ë');
like($text, qr/Şükrü Çelik/, 'the nurse\'s name, Ş ü and Ç included');
like($text, qr/Good care, follow up in a week\./, 'the doctor\'s review');
like($text, qr/\b4\s*\/\s*5\b/, 'the rating');
my @found = $text =~ /\b(word\d{4})\b/g;
is_deeply(\@found, \@words, 'the whole nurse report, every word in order across the pages');
like($text, qr/End of report\./, '... to its end');
unlike($text, qr/v2:[A-Za-z0-9+\/]{8}/, 'no ciphertext in the PDF');
is(request(GET => "/api/exports/$eid", as => $vp)->json->{data}{error}, undef, 'no error on the row');

# the export's pdf-export job added again, as BullMQ would retry it
my $export_again = sub {
    add_jobs('pdf-export', { name => 'generate-pdf',
        data => { exportJobId => $eid, userId => $vp, type => 'visit_report', filters => { visitId => $V } },
        opts => { attempts => 3, backoff => { type => 'exponential', delay => 2000 }, priority => 1 } });
};

# the same job again (a retry after a lost lock or a lost answer): the row
# is COMPLETED with its file in place, so nothing is rendered and the event
# names the same file, the one its owner was told of and may download
{
    my $again = $export_again->();
    my $seen2 = peer('watch', $URL, 'pdf-export', 2);
    ok($seen2->{completed}{ $again->[0] }, 'the same export job run again: completed');
    my $row2 = request(GET => "/api/exports/$eid", as => $vp)->json->{data};
    is_deeply([@{$row2}{qw(fileUrl fileSize checksum)}], [@{$row}{qw(fileUrl fileSize checksum)}],
              '... the row still names the first file, its size and checksum');
    is_deeply([glob("$DATA/uploads/exports/*")], [$pdf], '... no second file was rendered');
    my @readies = grep { ($_->{payload}{type} // '') eq 'EXPORT_READY' }
                  $sub->wait_for(5, sub { 2 <= grep { ($_->{payload}{type} // '') eq 'EXPORT_READY' } @_ });
    is(scalar @readies, 2, '... EXPORT_READY published again');
    is($readies[-1] && $readies[-1]{payload}{data}{fileUrl}, $row->{fileUrl}, '... naming the same file');
    is(request(GET => $row->{fileUrl}, as => $vp)->status, 200, '... which its owner still downloads');
}
# its file gone (removed by hand): the job again makes it anew, and the row
# names the new one
{
    unlink $pdf;
    my $again = $export_again->();
    my $seen3 = peer('watch', $URL, 'pdf-export', 3);
    ok($seen3->{completed}{ $again->[0] }, 'the file of a completed export removed, the job again: completed');
    my $row3 = request(GET => "/api/exports/$eid", as => $vp)->json->{data};
    isnt($row3->{fileUrl}, $row->{fileUrl}, '... the row names a new file');
    my $dl3 = request(GET => $row3->{fileUrl}, as => $vp);
    is($dl3->status, 200, '... which its owner downloads');
    is(Digest::SHA::sha256_hex($dl3->raw), $row3->{checksum}, '... with the checksum of the row');
    $pdf = "$DATA$row3->{fileUrl}";
}

# a job whose visit is gone: FAILED at once, with the reason
my $bad = 'cexportbad00000000000001';
psql(qq{INSERT INTO export_jobs (id, "userId", "userRole", type, filters, status)
        VALUES ('$bad', '$vp', 'PATIENT', 'visit_report', '{"visitId":"nosuchvisit"}', 'PENDING')});
$ids = add_jobs('pdf-export', { name => 'generate-pdf',
    data => { exportJobId => $bad, userId => $vp, type => 'visit_report', filters => { visitId => 'nosuchvisit' } },
    opts => { attempts => 3, backoff => { type => 'exponential', delay => 2000 }, priority => 1 } });
$seen = peer('watch', $URL, 'pdf-export', 4);
ok($seen->{failed}{ $ids->[0] }, 'the pdf job of a missing visit failed');
my $badrow = request(GET => "/api/exports/$bad", as => $vp)->json->{data};
is($badrow->{status}, 'FAILED', 'GET /api/exports/:id: FAILED');
like($badrow->{error}, qr/visit/i, '... with the reason');
is(job_of('pdf-export', $ids->[0])->{attemptsMade}, 1, '... at once: retrying cannot bring the visit back');
my @files = glob("$DATA/uploads/exports/*");
is_deeply(\@files, [$pdf], '... and left no file behind: the exports directory holds only the first report');
is($w->term, 0, 'SIGTERM: exit 0');

kill 'TERM', $sink_pid;
close $SINK;
done_testing();
