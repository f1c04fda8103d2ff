package Ahava::Worker;

# ahava-worker as the tests run it: a real process of worker/ahava-worker
# (worker/ahava-worker-asan when AHAVA_WORKER_ASAN=1) with the file's
# DATABASE_URL, REDIS_URL and ENCRYPTION_KEY, its JSON log in a file, and
# its /health and /metrics on a free port.
#
#   my $w = Ahava::Worker->start(name => 'w1', env => {...}, opts => [...]);
#   $w->logs;  $w->log_like(qr//);  $w->metrics;  $w->health;
#   $w->term;  (SIGTERM, waits for the exit, returns the status)
#   $w->kill9;

use strict;
use warnings;

use Carp qw(croak);
use File::Path qw(make_path remove_tree);
use JSON::PP ();
use POSIX ();
use Ahava::Test qw(env_value repo_root free_port poll_until);
use Ahava::Test::HTTP;
use Ahava::Test::Util qw(slurp process_alive);

my $JSON = JSON::PP->new->utf8->canonical;
my $TOP = repo_root();
my @ALL;

sub binary {
    return $ENV{AHAVA_WORKER_BIN} if $ENV{AHAVA_WORKER_BIN};
    return "$TOP/worker/ahava-worker" . ($ENV{AHAVA_WORKER_ASAN} ? '-asan' : '');
}

sub start {
    my ($class, %o) = @_;
    my $name = $o{name} || 'worker';
    my ($num) = $0 =~ m{(\d{3})-[^/]*$};
    my $dir = "$TOP/t/servroot-" . ($num // 'x') . "-worker/$name";
    remove_tree($dir);
    make_path($dir);
    my $port = free_port();
    my $self = bless { name => $name, dir => $dir, port => $port,
                       log => "$dir/worker.log" }, $class;
    unlink $self->{log};

    my %env = (
        DATABASE_URL => env_value('DATABASE_URL'),
        REDIS_URL => env_value('REDIS_URL'),
        ENCRYPTION_KEY => env_value('ENCRYPTION_KEY'),
        AHAVA_DATA_DIR => "$dir/data",
        AHAVA_WORKER_METRICS => "127.0.0.1:$port",
        ASAN_OPTIONS => 'detect_leaks=1:abort_on_error=0:exitcode=86',
        LSAN_OPTIONS => "suppressions=$TOP/worker/lsan.supp:print_suppressions=0",
        UBSAN_OPTIONS => 'print_stacktrace=1:halt_on_error=1',
        %{ $o{env} || {} },
    );

    my $pid = fork // croak "fork: $!";
    if (!$pid) {
        POSIX::setsid();
        open(STDIN, '<', '/dev/null');
        open(STDOUT, '>>', $self->{log});
        open(STDERR, '>>', $self->{log});
        for my $k (keys %env) {
            if (defined $env{$k}) { $ENV{$k} = $env{$k} } else { delete $ENV{$k} }
        }
        exec(binary(), (map { ('-o', $_) } @{ $o{opts} || [] })) or POSIX::_exit(127);
    }
    $self->{pid} = $pid;
    push @ALL, $self;

    unless ($o{no_wait}) {
        poll_until(15, sub { $self->health_code == 200 || !$self->alive })
            or croak "ahava-worker $name did not become healthy:\n" . $self->log_text;
        croak "ahava-worker $name exited at start:\n" . $self->log_text unless $self->alive;
    }
    return $self;
}

sub pid  { $_[0]{pid} }
sub port { $_[0]{port} }
sub dir  { $_[0]{dir} }

sub alive {
    my ($self) = @_;
    return 0 if defined $self->{status};
    my $r = waitpid($self->{pid}, POSIX::WNOHANG());
    if ($r == $self->{pid}) {
        $self->{status} = $?;
        return 0;
    }
    return 1;
}

sub _get {
    my ($self, $path) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $self->{port},
                                  Timeout => 3) or return (0, '');
    print {$s} "GET $path HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    local $/;
    my $text = <$s> // '';
    close $s;
    my ($code) = $text =~ m{^HTTP/1\.1 (\d{3})};
    my (undef, $body) = split /\r\n\r\n/, $text, 2;
    return ($code // 0, $body // '');
}

sub health_code { ($_[0]->_get('/health'))[0] }
sub health { my ($c, $b) = $_[0]->_get('/health'); return ($c, eval { $JSON->decode($b) }) }
sub metrics_text { ($_[0]->_get('/metrics'))[1] }

# {"name{labels}" => value}
sub metrics {
    my ($self) = @_;
    my %m;
    for (split /\n/, $self->metrics_text) {
        next if /^#/ || !/\S/;
        my ($k, $v) = /^(\S+)\s+(\S+)$/ or next;
        $m{$k} = $v;
    }
    return \%m;
}

sub log_text { slurp($_[0]{log}) // '' }

# the JSON log lines, decoded
sub logs {
    my ($self) = @_;
    return map { my $l = eval { $JSON->decode($_) }; $l ? ($l) : () }
           grep { /^\{/ } split /\n/, $self->log_text;
}

sub log_like { my ($self, $re) = @_; return $self->log_text =~ $re }

sub signal { kill $_[1], $_[0]{pid} }

# SIGTERM and wait (up to $secs) for the exit: the wait status, or undef
sub term {
    my ($self, $secs) = @_;
    return $self->{status} unless $self->alive;
    kill 'TERM', $self->{pid};
    return $self->wait_exit($secs // 30);
}

sub wait_exit {
    my ($self, $secs) = @_;
    poll_until($secs, sub { !$self->alive });
    return $self->{status};
}

sub kill9 {
    my ($self) = @_;
    kill 'KILL', $self->{pid};
    return $self->wait_exit(10);
}

sub END {
    for my $w (@ALL) {
        next unless $w->{pid} && !defined $w->{status};
        kill 'KILL', $w->{pid};
        waitpid($w->{pid}, 0);
    }
}

1;
