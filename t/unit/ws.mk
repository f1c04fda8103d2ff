# The RFC 6455 frame codec of ngx_ahava_ws (ngx_ahava_ws_frame.c): pure C,
# no nginx, so unit-tested here on its own.
#
# This fragment is read before the Makefile's own rules: keep `make` with
# no goal meaning `make all`, not the first target below.

.DEFAULT_GOAL := all

WS        = ../../ngx_ahava_ws
WS_DEPS   = $(WS)/ngx_ahava_ws_frame.c $(WS)/ngx_ahava_ws_frame.h \
            $(CORE)/ngx_ahava_utf8.c $(CORE)/ngx_ahava_utf8.h $(BUILD)/flags

UNIT_BINS += $(BUILD)/ws_frame_test
UNIT_RUNS += ; $(BUILD)/ws_frame_test

$(BUILD)/ws_frame_test: ws_frame_test.c $(WS_DEPS)
	$(CC) $(ALLFLAGS) -Wno-unused-parameter -I$(WS) -o $@ ws_frame_test.c \
	    $(WS)/ngx_ahava_ws_frame.c $(CORE)/ngx_ahava_utf8.c $(LDLIBS)
