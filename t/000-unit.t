# The pure-C unit tests (crypto) and the Node interop, run through their
# own Makefile; their TAP is checked here as a whole.
use strict;
use warnings;
use Test::More;
use Ahava::Test::Util qw(run_capture repo_root);

my ($rc, $out) = run_capture(['make', '-s', '-C', repo_root() . '/t/unit', 'test']);

is($rc, 0, 'make -C t/unit test exits 0') or diag($out);
unlike($out, qr/^not ok/m, 'no "not ok" in the unit tests\' TAP')
    or diag(join "\n", grep { /^not ok/ || /^#/ } split /\n/, $out);
my $oks = () = $out =~ /^ok \d+/mg;
cmp_ok($oks, '>=', 10, "the unit tests ran ($oks passing)");

done_testing();
