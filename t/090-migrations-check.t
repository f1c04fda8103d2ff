# At start the first worker tells, once, whether the database has this
# build's migrations (README "A host, step by step": a missing index is not
# an error, only slow): info when it has them, a warn naming what to run
# when ahava-migrate is behind, a notice when the database was set up
# without ahava-migrate.  In none of these cases may the check itself stop
# the API: its statement is prepared on every connection.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Ahava::Test::Util qw(slurp);
use File::Basename qw(basename);

setup();

my $CONF = <<'_EOC_';
ahava_database          env:DATABASE_URL;
ahava_jwt_secret        env:JWT_SECRET;
ahava_jwt_algorithm     HS256;
ahava_encryption_key    env:ENCRYPTION_KEY;

server {
    listen       127.0.0.1:$TEST_NGINX_SERVER_PORT;
    server_name  _;
    client_max_body_size  64k;
    error_page 400 401 403 404 405 413 414 429 500 502 503 504 @ahava_error;

    location /api/visits { ahava_visits; }
    location / { return 404; }
    location @ahava_error { ahava_error_page; }
}
_EOC_

my $TOP = repo_root();
my $LAST = basename((sort glob "$TOP/sql/[0-9]*.sql")[-1]);
my ($PREV) = map { basename($_) } (sort glob "$TOP/sql/[0-9]*.sql")[-2];
my ($BUILT) = slurp("$TOP/ngx_ahava_core/ngx_ahava_schema.c")
              =~ /#define\s+NGX_AHAVA_SCHEMA_LATEST\s+"([^"]+)"/;
is($BUILT, $LAST, "the build's newest migration is the last file of sql/ ($LAST)");

my $token = token($ID{admin});

# a started nginx, its check's line, and one request through it
sub started {
    my ($name, $re, $what) = @_;
    my $n = start_nginx($CONF, name => $name, workers => 2);
    error_log_like($re, "$name: $what", nginx => $n, timeout => 10);
    api_ok(response(GET => '/api/visits', token => $token, nginx => $n),
           "$name: the API answers");
    my @lines = grep { /ahava: (database migrations|the database|could not tell)/ }
                split /\n/, $n->error_log;
    is(scalar @lines, 1, "$name: one line, from the first worker only")
        or diag(join "\n", @lines);
    ok($n->stop, "nginx '$name' exits");
    check_error_log($n);
    return $n;
}

# --- migrated by ahava-migrate (setup did): said at info -------------------------
{
    my $n = started('current', qr/\[info\].*ahava: database migrations applied up to \Q$LAST\E/,
                    "info: applied up to $LAST");
    unlike($n->error_log, qr/\[warn\].*migration/, 'current: no warn about migrations');
}

# --- ahava-migrate behind this build: a warn naming what to run ------------------
{
    # file names of sql/ only: quoting them in the SQL is safe
    my $row = psql(qq{SELECT checksum, "appliedAt" FROM "_ahava_migrations" WHERE name = '$LAST'})->[0];
    ok($row, "the record of $LAST");
    psql(qq{DELETE FROM "_ahava_migrations" WHERE name = '$LAST'});
    started('behind', qr/\[warn\].*ahava: the database's last migration is \Q$PREV\E, this build needs sql\/ up to \Q$LAST\E: run ahava-migrate/,
            "warn: last is $PREV, needs $LAST, run ahava-migrate");
    psql(qq{INSERT INTO "_ahava_migrations" (name, checksum, "appliedAt")
            VALUES ('$LAST', '$row->[0]', '$row->[1]')});
}

# --- set up another way (no _ahava_migrations): a notice, the API unharmed -------
{
    psql(q{ALTER TABLE "_ahava_migrations" RENAME TO "_ahava_migrations_away"});
    started('unmanaged', qr/\[notice\].*ahava: the database has no _ahava_migrations table, or an empty one/,
            'notice: no _ahava_migrations table');
    psql(q{ALTER TABLE "_ahava_migrations_away" RENAME TO "_ahava_migrations"});
}

is(psql_value(q{SELECT max(name) FROM "_ahava_migrations"}), $LAST, 'the records are back as they were');

done_ahava();
