package Ahava::Test::Postgres;

# A private PostgreSQL 15 cluster for one test file: initdb into a temp dir,
# start/stop/start again on the same port and data dir (for the tests that
# take the database away under nginx).
#
#   my $pg = Ahava::Test::Postgres->start;      # new cluster, free port
#   $pg->url('mydb');  $pg->stop;  $pg->start;  $pg->destroy;
#
# pg_stat_statements is preloaded, so a test can count the statements nginx
# ran (Ahava::Test::statement_calls).  ssl => 1 turns TLS on with a
# self-signed certificate made by openssl.

use strict;
use warnings;

use File::Temp qw(tempdir);
use File::Path qw(remove_tree);
use Ahava::Test::Util qw(free_port run_capture as_postgres poll_until
                         port_open slurp);

our $PGBIN = $ENV{AHAVA_TEST_PGBIN} || '/usr/lib/postgresql/15/bin';

sub start {
    my ($self, %o) = @_;
    $self = bless { %o }, $self unless ref $self;

    unless ($self->{dir}) {
        $self->{dir} = tempdir('ahava-pg-XXXXXX', TMPDIR => 1);
        $self->{port} ||= free_port();
        if ($> == 0) {
            my (undef, undef, $uid, $gid) = getpwnam('postgres')
                or die "no postgres user";
            chown $uid, $gid, $self->{dir} or die "chown $self->{dir}: $!";
        }
        my ($rc, $out) = run_capture([as_postgres("$PGBIN/initdb",
            '-D', "$self->{dir}/data", '-U', 'postgres', '--auth=trust',
            '-E', 'UTF8', '--no-sync', '--no-instructions')]);
        die "initdb failed ($rc):\n$out" if $rc;
        $self->_make_cert if $self->{ssl};
    }

    my $ssl = $self->{ssl}
        ? " -c ssl=on -c ssl_cert_file=$self->{dir}/data/server.crt"
          . " -c ssl_key_file=$self->{dir}/data/server.key"
        : '';

    my ($rc, $out) = run_capture([as_postgres("$PGBIN/pg_ctl",
        '-D', "$self->{dir}/data", '-l', "$self->{dir}/postgres.log",
        '-w', '-t', '60', '-o',
        "-p $self->{port} -k $self->{dir} -c listen_addresses=127.0.0.1"
        . " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        . " -c max_connections=100 -c shared_buffers=32MB"
        . " -c shared_preload_libraries=pg_stat_statements$ssl",
        'start')]);
    if ($rc) {
        my $log = slurp("$self->{dir}/postgres.log") // '';
        die "pg_ctl start failed ($rc):\n$out\n$log";
    }
    $self->{running} = 1;
    return $self;
}

sub _make_cert {
    my ($self) = @_;
    my $d = "$self->{dir}/data";
    my ($rc, $out) = run_capture(['openssl', 'req', '-x509', '-newkey',
        'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=127.0.0.1',
        '-keyout', "$d/server.key", '-out', "$d/server.crt"]);
    die "openssl req failed ($rc):\n$out" if $rc;
    if ($> == 0) {
        my (undef, undef, $uid, $gid) = getpwnam('postgres');
        chown $uid, $gid, "$d/server.key", "$d/server.crt";
    }
    chmod 0600, "$d/server.key";
}

sub stop {
    my ($self, %o) = @_;
    return unless $self->{running};
    my ($rc, $out) = run_capture([as_postgres("$PGBIN/pg_ctl",
        '-D', "$self->{dir}/data", '-m', $o{mode} || 'fast', '-w', '-t', '60',
        'stop')]);
    die "pg_ctl stop failed ($rc):\n$out" if $rc;
    $self->{running} = 0;
    return 1;
}

sub port    { $_[0]{port} }
sub running { $_[0]{running} }
sub log     { slurp("$_[0]{dir}/postgres.log") }

sub url {
    my ($self, $db) = @_;
    return "postgresql://postgres\@127.0.0.1:$self->{port}/" . ($db // 'postgres');
}

sub destroy {
    my ($self) = @_;
    eval { $self->stop } if $self->{running};
    warn "# stopping PostgreSQL: $@" if $@;
    remove_tree($self->{dir}) if $self->{dir} && !$ENV{AHAVA_TEST_KEEP};
    $self->{dir} = undef;
}

1;
