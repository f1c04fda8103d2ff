package Ahava::Test::Util;

# Small helpers shared by the harness modules: free ports, bounded polling,
# running commands with their output captured, PostgreSQL's "run as postgres".

use strict;
use warnings;

use Exporter 'import';
use IO::Socket::INET;
use IPC::Open3 qw(open3);
use POSIX ();
use Symbol qw(gensym);
use Time::HiRes qw(time);

our @EXPORT_OK = qw(free_port port_open poll_until run_capture as_postgres
                    slurp spew process_alive repo_root);

my %RESERVED = map { $_ => 1 } (4000, 54329, 63799);   # the dev stack's ports
my %HANDED_OUT;

# A TCP port on 127.0.0.1 nothing listens on now.  The kernel picks it
# (bind to port 0); we never hand out the same one twice in a process.
sub free_port {
    for (1 .. 100) {
        my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => '127.0.0.1',
                                      LocalPort => 0, Proto => 'tcp',
                                      ReuseAddr => 0)
            or die "cannot bind a free port: $!";
        my $port = $s->sockport;
        close $s;
        next if $RESERVED{$port} || $HANDED_OUT{$port}++;
        return $port;
    }
    die "no free port found";
}

sub port_open {
    my ($port, $host) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => $host || '127.0.0.1',
                                  PeerPort => $port, Proto => 'tcp',
                                  Timeout => 1);
    return 0 unless $s;
    close $s;
    return 1;
}

# Calls $cb until it returns true or $timeout seconds have passed; returns
# the callback's last value.  The short waits between tries are polling
# intervals, never the synchronisation itself.
sub poll_until {
    my ($timeout, $cb) = @_;
    my $deadline = time + $timeout;
    my $wait = 0.02;
    while (1) {
        my $v = $cb->();
        return $v if $v;
        return $v if time >= $deadline;
        select(undef, undef, undef, $wait);
        $wait = 0.2 if ($wait *= 1.5) > 0.2;
    }
}

# Runs a command (list form, no shell), stdin from $opts{stdin} (a string)
# or /dev/null, stdout and stderr merged.  Returns (exit status, output).
sub run_capture {
    my ($cmd, %opts) = @_;
    local %ENV = %ENV;
    if ($opts{env}) {
        while (my ($k, $v) = each %{ $opts{env} }) {
            if (defined $v) { $ENV{$k} = $v } else { delete $ENV{$k} }
        }
    }
    my ($in, $out);
    my $pid = open3($in, $out, undef, @$cmd);
    if (defined $opts{stdin}) {
        # small inputs only (the callers pass SQL through files)
        print {$in} $opts{stdin};
    }
    close $in;
    local $/;
    my $output = <$out>;
    $output = '' unless defined $output;
    close $out;
    waitpid($pid, 0);
    my $rc = $? >> 8;
    $rc = 128 + ($? & 127) if $? & 127;
    return ($rc, $output);
}

# PostgreSQL refuses to run as root: as root, run its tools as "postgres".
sub as_postgres {
    my @cmd = @_;
    return $> == 0 ? ('runuser', '-u', 'postgres', '--', @cmd) : @cmd;
}

sub slurp {
    my ($file) = @_;
    open(my $fh, '<:raw', $file) or return undef;
    local $/;
    my $s = <$fh>;
    close $fh;
    return defined $s ? $s : '';
}

sub spew {
    my ($file, $content) = @_;
    open(my $fh, '>:raw', $file) or die "cannot write $file: $!";
    print {$fh} $content;
    close $fh or die "cannot write $file: $!";
}

# kill 0 says yes to a zombie; /proc tells them apart.
sub process_alive {
    my ($pid) = @_;
    return 0 unless $pid && kill(0, $pid);
    if (open(my $fh, '<', "/proc/$pid/stat")) {
        my $stat = <$fh> // '';
        close $fh;
        return 0 if $stat =~ /^\d+ \(.*\) Z /s;
    }
    return 1;
}

sub repo_root {
    require File::Spec;
    require Cwd;
    my $here = Cwd::abs_path(__FILE__);            # t/lib/Ahava/Test/Util.pm
    my @d = File::Spec->splitdir((File::Spec->splitpath($here))[1]);
    pop @d while @d && $d[-1] eq '';
    splice(@d, -4);                                # drop t/lib/Ahava/Test
    return File::Spec->catdir(@d);
}

1;
