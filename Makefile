# Builds the Ahava modules as one dynamic module against Debian's nginx-dev
# tree (the ABI of the packaged /usr/sbin/nginx).
#
#   make            build/ngx_ahava_core_module.so
#   make asan       build-asan/ngx_ahava_core_module.so with ASan + UBSan
#   make worker     worker/ahava-worker, the daemon that drains the queues
#   make unit       pure-C unit tests (TAP)
#   make test       the whole suite (what README's test command runs)

NGX_SRC   ?= /usr/share/nginx/src
TOP       := $(CURDIR)
SRCS      := config $(wildcard ngx_ahava_*/*.c ngx_ahava_*/*.h)

BUILD     ?= $(TOP)/build
ASAN_BUILD = $(TOP)/build-asan
SAN_FLAGS  = -fsanitize=address,undefined -fno-omit-frame-pointer \
             -fno-sanitize-recover=undefined

.PHONY: all asan worker unit test test-asan clean

all: $(BUILD)/ngx_ahava_core_module.so

$(BUILD)/Makefile: config
	mkdir -p $(BUILD)
	cd $(NGX_SRC) && bash -c '. ./conf_flags; ./configure \
	    --with-cc-opt="$$(dpkg-buildflags --get CFLAGS) -fPIC $(EXTRA_CFLAGS)" \
	    --with-ld-opt="$$(dpkg-buildflags --get LDFLAGS) -fPIC $(EXTRA_LDFLAGS)" \
	    "$${NGX_CONF_FLAGS[@]}" --add-dynamic-module=$(TOP) \
	    --builddir=$(BUILD)' > $(BUILD)/configure.log 2>&1 \
	    || { tail -30 $(BUILD)/configure.log; exit 1; }

$(BUILD)/ngx_ahava_core_module.so: $(BUILD)/Makefile $(SRCS)
	$(MAKE) -f $(BUILD)/Makefile -C $(NGX_SRC) modules

asan:
	$(MAKE) BUILD=$(ASAN_BUILD) EXTRA_CFLAGS="$(SAN_FLAGS)" \
	    EXTRA_LDFLAGS="$(SAN_FLAGS)" all

worker:
	$(MAKE) -C worker all

unit:
	$(MAKE) -C t/unit test

test: all
	bin/ahava test

# the suite against the sanitizer builds: libasan is preloaded into nginx
# only (TEST_NGINX_ASAN), leaks are not checked there because nginx does
# not free its cycle pool at exit by design; ahava-worker runs as its ASan
# build (AHAVA_WORKER_ASAN), leaks checked at its exit
test-asan: asan
	$(MAKE) -C t/unit asan test
	$(MAKE) -C worker asan
	TEST_NGINX_LOAD_MODULES=$(ASAN_BUILD)/ngx_ahava_core_module.so \
	    TEST_NGINX_ASAN=1 AHAVA_WORKER_ASAN=1 prove -I t/lib -r t/

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
	$(MAKE) -C worker clean

# Debian packages libnginx-mod-http-ahava and ahava-worker into dist/, by
# dpkg-buildpackage (debian/) in a copy of the tree; bin/ahava-package-test
# lints, installs, runs and purges them
.PHONY: deb
deb:
	bin/ahava-build-deb
