package Ahava::Test::Redis;

# A private redis-server for one test file; stop and start again on the
# same port (for the tests that take Redis away under nginx).
#
#   my $r = Ahava::Test::Redis->start;  $r->url;  $r->stop;  $r->start;
#   Ahava::Test::Redis->start(appendonly => 1): keeps its data across a stop

use strict;
use warnings;

use File::Temp qw(tempdir);
use File::Path qw(remove_tree);
use IO::Socket::INET;
use Ahava::Test::Util qw(free_port run_capture poll_until port_open slurp
                         process_alive);

sub start {
    my ($self, %o) = @_;
    $self = bless { %o }, $self unless ref $self;
    $self->{dir}  ||= tempdir('ahava-redis-XXXXXX', TMPDIR => 1);
    $self->{port} ||= free_port();

    my ($rc, $out) = run_capture(['redis-server', '--port', $self->{port},
        '--bind', '127.0.0.1', '--dir', $self->{dir}, '--save', '',
        '--appendonly', $self->{appendonly} ? 'yes' : 'no',
        '--appendfsync', 'always', '--daemonize', 'yes',
        '--pidfile', "$self->{dir}/redis.pid",
        '--logfile', "$self->{dir}/redis.log",
        defined $o{requirepass} ? ('--requirepass', $o{requirepass}) : ()]);
    $self->{auth} = $o{requirepass};
    die "redis-server failed ($rc): $out" if $rc;

    poll_until(10, sub { $self->ping })
        or die "redis-server did not answer PING on port $self->{port}:\n"
               . (slurp("$self->{dir}/redis.log") // '');
    $self->{running} = 1;
    return $self;
}

sub ping {
    my ($self) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                  PeerPort => $self->{port}, Timeout => 1)
        or return 0;
    print {$s} defined $self->{auth} ? "AUTH $self->{auth}\r\nPING\r\n" : "PING\r\n";
    my $line = '';
    my $rin = '';
    vec($rin, fileno($s), 1) = 1;
    my $end = time + 1;
    while ($line !~ /\+PONG/ && time < $end && select(my $r = $rin, undef, undef, 1)) {
        sysread($s, my $more, 64) or last;
        $line .= $more;
    }
    close $s;
    return $line =~ /\+PONG/ ? 1 : 0;
}

# start(requirepass => $p) keeps every client without the password out
# (nginx too) until this lets them in: a test's own client is first
sub open_to_all {
    my ($self) = @_;
    return 1 unless defined $self->{auth};
    my ($rc, $out) = run_capture(['redis-cli', '-p', $self->{port}, '--no-auth-warning',
                                  '-a', $self->{auth}, 'CONFIG', 'SET', 'requirepass', '']);
    return 0 if $rc || $out !~ /OK/;
    delete $self->{auth};
    return 1;
}

sub stop {
    my ($self) = @_;
    return unless $self->{running};
    my $pid = slurp("$self->{dir}/redis.pid");
    $pid = $1 if defined $pid && $pid =~ /(\d+)/;
    run_capture(['redis-cli', '-p', $self->{port}, 'shutdown',
                 $self->{appendonly} ? () : 'nosave']);
    poll_until(10, sub { !port_open($self->{port})
                         && !($pid && process_alive($pid)) })
        or die "redis-server on port $self->{port} did not stop";
    $self->{running} = 0;
    return 1;
}

# clients connected now, not counting the redis-cli that asks
sub clients {
    my ($self) = @_;
    my ($rc, $out) = run_capture(['redis-cli', '-p', $self->{port}, 'client', 'list']);
    return undef if $rc;
    my @l = grep { /\bcmd=/ && !/\bcmd=client\|list\b/ } split /\n/, $out;
    return scalar @l;
}

sub port    { $_[0]{port} }
sub running { $_[0]{running} }
sub url     { "redis://127.0.0.1:$_[0]{port}/0" }

sub destroy {
    my ($self) = @_;
    eval { $self->stop } if $self->{running};
    warn "# stopping Redis: $@" if $@;
    remove_tree($self->{dir}) if $self->{dir} && !$ENV{AHAVA_TEST_KEEP};
    $self->{dir} = undef;
}

1;
