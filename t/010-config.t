# nginx -t with the example configuration (conf.d/), and the emergencies a
# broken configuration must raise: a missing env: secret, a bad encryption
# key, an unknown JWT algorithm.  No secret value may ever be printed.
use strict;
use warnings;
use Test::More;
use Ahava::Test;
use Ahava::Test::Util qw(slurp spew);
use MIME::Base64 qw(encode_base64);
use File::Path qw(make_path);
use File::Temp ();

setup(services => 0);   # secrets and URLs only: nginx -t connects to nothing

my $TOP = repo_root();
my $example = slurp("$TOP/conf.d/ahava.conf");
ok($example =~ /\@AHAVA_PORT\@/, 'conf.d/ahava.conf has the @AHAVA_PORT@ placeholder');

my $port = free_port();
my $datadir = File::Temp::tempdir('ahava-config-XXXXXX', TMPDIR => 1, CLEANUP => 1);
(my $rendered = $example) =~ s/\@AHAVA_PORT\@/$port/g;
$rendered =~ s/\@AHAVA_DATA_DIR\@/$datadir/g;
$rendered =~ s/\@AHAVA_SHARE_DIR\@/$TOP/g;
unlike($rendered, qr/\@[A-Z_]+\@/, 'no placeholder left after rendering');

my %secret = (
    JWT_SECRET     => env_value('JWT_SECRET'),
    ENCRYPTION_KEY => env_value('ENCRYPTION_KEY'),
);

# nginx -t on the rendered example, with environment changes; returns
# (exit status, stderr+stdout, error log)
sub nginx_t {
    my (%o) = @_;
    my $n = nginx('include ahava.conf;', name => $o{name} || 't',
                  env => $o{env} || {},
                  files => { 'ahava.conf' => $o{conf} // $rendered });
    my ($rc, $out) = $n->test_config;
    return ($rc, $out, $n->error_log);
}

# every value that must stay secret, for this run
sub no_secrets {
    my ($text, $name, @extra) = @_;
    my @leaks = grep { index($text, $_) >= 0 } (values %secret, @extra);
    ok(!@leaks, "$name: no secret value in the output or the log")
        or diag("leaked: @leaks\n$text");
}

{
    my ($rc, $out, $log) = nginx_t();
    is($rc, 0, 'nginx -t succeeds with conf.d/ahava.conf rendered') or diag($out);
    like($out, qr/test is successful/, 'nginx -t says the test is successful');
    no_secrets("$out\n$log", 'valid configuration');
    ok(-d "$datadir/uploads/$_", "the upload directory $_ is made at start")
        for qw(images documents exports);
}
{
    # an upload root that cannot be one is said at start, not as a 500 later
    spew("$datadir/not-a-dir", '');
    (my $conf = $rendered) =~ s{ahava_upload_root\s+\S+;}{ahava_upload_root $datadir/not-a-dir;};
    my ($rc, $out) = nginx_t(conf => $conf, name => 'badroot');
    isnt($rc, 0, 'ahava_upload_root naming a file: nginx -t fails');
    like($out, qr/\[emerg\].*not-a-dir.*is not a directory/, '... saying so');
}

# the shipped main configuration (conf.d/nginx.conf) around it
{
    my $dir = "$TOP/t/servroot-010-config/shipped";
    make_path("$dir/logs", "$dir/nginx");
    my $main = slurp("$TOP/conf.d/nginx.conf");
    my $module = (Ahava::Test::Nginx::modules())[0];
    if (defined $module) {
        $main =~ s/\@AHAVA_MODULE\@/$module/g;
    } else {
        # an nginx with the modules compiled in: nothing to load
        $main =~ s/^load_module\s+\@AHAVA_MODULE\@;\n//m;
    }
    $main =~ s/\@AHAVA_DATA_DIR\@/$dir/g;
    $main =~ s/\@AHAVA_CONF_DIR\@/$dir/g;
    spew("$dir/nginx.conf", $main);
    spew("$dir/ahava.conf", $rendered);
    my ($rc, $out) = run_capture([Ahava::Test::Nginx::binary(), '-p', "$dir/",
        '-c', "$dir/nginx.conf", '-e', "$dir/logs/nginx-error.log", '-t'],
        env => { Ahava::Test::Nginx::sanitizer_env(), map { $_ => env_value($_) }
                 qw(DATABASE_URL REDIS_URL JWT_SECRET ENCRYPTION_KEY) });
    is($rc, 0, 'nginx -t succeeds with conf.d/nginx.conf + conf.d/ahava.conf rendered')
        or diag($out);
}

# a missing or empty env: secret
for my $var (qw(DATABASE_URL REDIS_URL JWT_SECRET ENCRYPTION_KEY)) {
    for my $case (['unset', undef], ['empty', '']) {
        my ($rc, $out, $log) = nginx_t(env => { $var => $case->[1] });
        isnt($rc, 0, "$var $case->[0]: nginx -t fails");
        like($out, qr/\[emerg\] environment variable "\Q$var\E" is not set/,
             "$var $case->[0]: a clear [emerg] naming the variable") or diag($out);
        no_secrets("$out\n$log", "$var $case->[0]");
    }
}

# ENCRYPTION_KEY that is not the base64 of 32 bytes
{
    my @bad = (
        ['16 bytes',     encode_base64('k' x 16, '')],
        ['33 bytes',     encode_base64('k' x 33, '')],
        ['not base64',   'this-is-not-base64-but-a-secret!!'],
        ['hex of 32 bytes', 'ab' x 32],
    );
    for my $b (@bad) {
        my ($rc, $out, $log) = nginx_t(env => { ENCRYPTION_KEY => $b->[1] });
        isnt($rc, 0, "ENCRYPTION_KEY $b->[0]: nginx -t fails");
        like($out, qr/\[emerg\] ahava_encryption_key: key 1 is not the base64 of 32 bytes/,
             "ENCRYPTION_KEY $b->[0]: a clear [emerg]") or diag($out);
        no_secrets("$out\n$log", "ENCRYPTION_KEY $b->[0]", $b->[1]);
    }
}

# an unknown (or unsigned) JWT algorithm
for my $alg (qw(FOO none hs256 HS1024)) {
    (my $conf = $rendered) =~ s/ahava_jwt_algorithm\s+HS256;/ahava_jwt_algorithm $alg;/
        or BAIL_OUT('conf.d/ahava.conf has no "ahava_jwt_algorithm HS256;" line');
    my ($rc, $out, $log) = nginx_t(conf => $conf);
    isnt($rc, 0, "ahava_jwt_algorithm $alg: nginx -t fails");
    like($out, qr/\[emerg\] unknown JWT algorithm "\Q$alg\E"/,
         "ahava_jwt_algorithm $alg: a clear [emerg]") or diag($out);
}

# passwords inside the URLs are secrets too
{
    my $pw = 'Pg-Pa55word-' . int(rand 1e9);
    my $rpw = 'Redis-Pa55word-' . int(rand 1e9);
    my ($rc, $out, $log) = nginx_t(env => {
        DATABASE_URL => "postgresql://ahava:$pw\@127.0.0.1:5432/ahava",
        REDIS_URL    => "redis://:$rpw\@127.0.0.1:6379/0" });
    is($rc, 0, 'URLs with passwords: nginx -t succeeds') or diag($out);
    no_secrets("$out\n$log", 'URLs with passwords', $pw, $rpw);

    ($rc, $out, $log) = nginx_t(env => {
        DATABASE_URL => "postgresql://ahava:$pw\@127.0.0.1:5432/ahava?no_such_option=1" });
    isnt($rc, 0, 'an invalid DATABASE_URL: nginx -t fails');
    like($out, qr/\[emerg\] ahava_database: invalid connection string/,
         'an invalid DATABASE_URL: a clear [emerg]') or diag($out);
    no_secrets("$out\n$log", 'an invalid DATABASE_URL', $pw);
}

# any valid DATABASE_URL is accepted, whatever the length of its parts
{
    my (@failed, $example_out);
    for my $len (20 .. 35) {
        my $db = 'd' x $len;
        my ($rc, $out) = nginx_t(name => "dblen$len",
            env => { DATABASE_URL => "postgresql://postgres\@127.0.0.1:5432/$db" });
        next unless $rc;
        push @failed, $len;
        $example_out //= $out;
    }
    ok(!@failed, 'nginx -t succeeds for database names of 20 to 35 characters')
        or diag("fails for lengths @failed:\n$example_out");
}

# file: secrets (a relative path is relative to the configuration directory)
{
    (my $conf = $rendered) =~ s/ahava_jwt_secret\s+env:JWT_SECRET;/ahava_jwt_secret file:jwt.secret;/
        or BAIL_OUT('conf.d/ahava.conf has no "ahava_jwt_secret env:JWT_SECRET;" line');
    my $n = nginx('include ahava.conf;', name => 'file-secret',
                  files => { 'ahava.conf' => $conf, 'jwt.secret' => "$secret{JWT_SECRET}\n" },
                  env => { JWT_SECRET => undef });
    my ($rc, $out) = $n->test_config;
    is($rc, 0, 'ahava_jwt_secret file:...: nginx -t succeeds') or diag($out);
    no_secrets("$out\n" . $n->error_log, 'file: secret');

    $n = nginx('include ahava.conf;', name => 'file-missing',
               files => { 'ahava.conf' => $conf }, env => { JWT_SECRET => undef });
    ($rc, $out) = $n->test_config;
    isnt($rc, 0, 'ahava_jwt_secret file: of a missing file: nginx -t fails');
    like($out, qr/\[emerg\] open\(\) ".*jwt\.secret" failed/, 'a clear [emerg] naming the file')
        or diag($out);
}

done_ahava();
