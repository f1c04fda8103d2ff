# The RFC 6455 frame parser of ngx_ahava_ws (ngx_ahava_ws_frame.c, pure C):
# arbitrary client bytes, parsed whole, in chunks the input chooses and one
# byte at a time.  Seeds: 2 bytes of settings (limits, chunking), then
# valid masked frames.
#
# This fragment is read before the Makefile's own rules: keep `make` with
# no goal meaning `make all`, not the first target below.

.DEFAULT_GOAL := all

WS_SRC    = ../ngx_ahava_ws
WS_FUZZER = $(BUILD)/ws_frame_fuzz

FUZZERS   += $(WS_FUZZER)

# FUZZ_RUNS starts empty and `set -e; ; cmd` is a syntax error: a ';'
# only after earlier commands
WS_SEP    := $(if $(strip $(FUZZ_RUNS)),;)
FUZZ_RUNS += $(WS_SEP) $(WS_FUZZER) -max_total_time=$(FUZZ_TIME) \
             -print_final_stats=1 -artifact_prefix=$(BUILD)/ws- \
             $(BUILD)/ws-corpus

run: | $(BUILD)/ws-corpus

$(WS_FUZZER): ws_frame_fuzz.c $(WS_SRC)/ngx_ahava_ws_frame.c \
              $(WS_SRC)/ngx_ahava_ws_frame.h $(CORE)/ngx_ahava_utf8.c
	mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -I$(WS_SRC) -o $@ ws_frame_fuzz.c \
	    $(WS_SRC)/ngx_ahava_ws_frame.c $(CORE)/ngx_ahava_utf8.c $(LDLIBS)

# masked frames (keys 37fa213d and others): text "Hello" (RFC 6455 5.7),
# binary, text in two fragments around a ping, ping, close 1000 "bye",
# UTF-8 text split inside a character, a 126-byte binary (16-bit length),
# and under small limits (settings byte 015: 4-byte frames, 8-byte
# messages) a message of exactly 8 bytes
$(BUILD)/ws-corpus:
	mkdir -p $@
	printf '\000\000\201\205\067\372\041\075\177\237\115\121\130' \
	    > $@/seed-text
	printf '\000\000\202\206\067\372\041\075\067\005\241\102\066\370' \
	    > $@/seed-binary
	{ printf '\000\000\001\203\067\372\041\075\177\237\115'; \
	  printf '\211\202\001\002\003\004\151\153'; \
	  printf '\200\202\240\260\300\320\314\337'; } > $@/seed-fragmented
	printf '\000\000\211\204\021\042\063\104\141\113\135\043' \
	    > $@/seed-ping
	printf '\000\000\210\205\125\146\167\210\126\216\025\361\060' \
	    > $@/seed-close
	{ printf '\000\001\001\210\067\372\041\075\144\222\100\121\130\227'; \
	  printf '\001\352\200\213\067\372\041\075\236\055\275\352\242\055'; \
	  printf '\274\315\250\142\241'; } > $@/seed-utf8
	{ printf '\000\003\202\376\000\176\000\000\000\000'; \
	  head -c 126 /dev/zero; } > $@/seed-len16
	{ printf '\015\002\001\204\067\372\041\075\126\230\102\131'; \
	  printf '\200\204\067\372\041\075\122\234\106\125'; } > $@/seed-small
