# The upload parsers of ngx_ahava_upload/ (pure C): the streaming
# multipart/form-data parser and the file type sniffer.  Each input is
# parsed whole, in chunks its hash chooses and one byte at a time, and the
# results compared.  First byte of a seed: multipart_fuzz's settings
# (boundary AaB03x, ----x, b or a 70-character one; 4: small limits),
# sniff_fuzz's allowed kinds (1 images, 2 documents, 0 or 3 both).
#
# This fragment is read before the Makefile's own rules: keep `make` with
# no goal meaning `make all`, not the first target below.

.DEFAULT_GOAL := all

UPLOAD_SRC    = ../ngx_ahava_upload
MP_FUZZER     = $(BUILD)/multipart_fuzz
SNIFF_FUZZER  = $(BUILD)/sniff_fuzz

FUZZERS      += $(MP_FUZZER) $(SNIFF_FUZZER)

# FUZZ_RUNS starts empty and `set -e; ; cmd` is a syntax error: a ';'
# only after earlier commands
UPLOAD_SEP   := $(if $(strip $(FUZZ_RUNS)),;)
FUZZ_RUNS    += $(UPLOAD_SEP) $(MP_FUZZER) -max_total_time=$(FUZZ_TIME) \
                -print_final_stats=1 -artifact_prefix=$(BUILD)/mp- \
                $(BUILD)/mp-corpus; \
                $(SNIFF_FUZZER) -max_total_time=$(FUZZ_TIME) \
                -print_final_stats=1 -artifact_prefix=$(BUILD)/sniff- \
                $(BUILD)/sniff-corpus

run: | $(BUILD)/mp-corpus $(BUILD)/sniff-corpus

$(MP_FUZZER): multipart_fuzz.c $(UPLOAD_SRC)/ngx_ahava_multipart.c \
              $(UPLOAD_SRC)/ngx_ahava_multipart.h
	mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -I$(UPLOAD_SRC) -o $@ multipart_fuzz.c \
	    $(UPLOAD_SRC)/ngx_ahava_multipart.c

$(SNIFF_FUZZER): sniff_fuzz.c $(UPLOAD_SRC)/ngx_ahava_sniff.c \
                 $(UPLOAD_SRC)/ngx_ahava_sniff.h
	mkdir -p $(BUILD)
	$(CC) $(CFLAGS) -I$(UPLOAD_SRC) -o $@ sniff_fuzz.c \
	    $(UPLOAD_SRC)/ngx_ahava_sniff.c

MP_CD = Content-Disposition: form-data; name=

# a field and a file; the same with a boundary of dashes; under small
# limits; preamble, padding, filename*, escaped quote, epilogue
$(BUILD)/mp-corpus:
	mkdir -p $@
	{ printf '\000--AaB03x\r\n$(MP_CD)\042title\042\r\n\r\nhello\r\n'; \
	  printf -- '--AaB03x\r\n$(MP_CD)\042file\042; filename=\042a.jpg\042'; \
	  printf '\r\nContent-Type: image/jpeg\r\n\r\n\377\330\377\340 '; \
	  printf '\r\n--AaB0 data\r\n--AaB03x--\r\n'; } > $@/seed-simple
	{ printf '\001------x\r\n$(MP_CD)a\r\n\r\n---\r\n------\r\n'; \
	  printf -- '------x\r\n$(MP_CD)b; filename=b.txt\r\n\r\n\r\n'; \
	  printf -- '------x--'; } > $@/seed-dashes
	{ printf '\004--AaB03x\r\n$(MP_CD)a\r\n\r\n0123456789abcdef\r\n'; \
	  printf -- '--AaB03x\r\n$(MP_CD)f; filename=x\r\n\r\n0123456789'; \
	  printf '\r\n--AaB03x--\r\n'; } > $@/seed-small
	{ printf '\002preamble\r\n--b \t\r\n$(MP_CD)\042a\\\042b\042; '; \
	  printf 'filename=\042x\\\042.pdf\042; '; \
	  printf "filename*=UTF-8''%%e2%%82%%ac.pdf\r\n"; \
	  printf 'content-type: application/pdf\r\n\r\n%%PDF-1.4\r\n'; \
	  printf -- '--b--\r\nepilogue\r\n'; } > $@/seed-ext

# JPEG, PNG, GIF, WebP, PDF, DOC, DOCX (entries with and without a data
# descriptor), UTF-8 text, CSV, a GIF with a script, SVG, ELF
$(BUILD)/sniff-corpus:
	mkdir -p $@
	{ printf '\003\377\330\377\340\000\020JFIF\000\001\001\000\000\001'; \
	  printf '\000\001\000\000\377\331'; } > $@/seed-jpeg
	{ printf '\001\211PNG\r\n\032\n\000\000\000\rIHDR\000\000\000\001'; \
	  printf '\000\000\000\001\010\006\000\000\000\037\025\304\211'; \
	  } > $@/seed-png
	{ printf '\001GIF89a\001\000\001\000\200\000\000\377\377\377\000'; \
	  printf '\000\000,\000\000\000\000\001\000\001\000\000\002\002D'; \
	  printf '\001\000;'; } > $@/seed-gif
	{ printf '\003RIFF\032\000\000\000WEBPVP8L\r\000\000\000/\000\000'; \
	  printf '\000\020\007\020\021\021\210\210\376\007\000'; \
	  } > $@/seed-webp
	printf '\002%%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%%%%EOF\n' \
	    > $@/seed-pdf
	{ printf '\002\320\317\021\340\241\261\032\341\000\000\000\000\000'; \
	  printf '\000\000\000>\000\003\000\376\377\011\000'; } > $@/seed-doc
	{ printf '\002PK\003\004\024\000\010\000\000\000\000\000\000\000'; \
	  printf '\000\000\000\000\000\000\000\000\000\000\000\000'; \
	  printf '\023\000\000\000'; \
	  printf '[Content_Types].xml<Types/>'; \
	  printf 'PK\007\010\000\000\000\000\010\000\000\000\010\000\000\000'; \
	  printf 'PK\003\004\024\000\000\000\000\000\000\000\000\000\000\000'; \
	  printf '\000\000\006\000\000\000\006\000\000\000\021\000\000\000'; \
	  printf 'word/document.xml<w:d/>'; \
	  printf 'PK\005\006\000\000\000\000\000\000\000\000\000\000\000\000'; \
	  printf '\000\000\000\000\000\000'; } > $@/seed-docx
	{ printf '\002\357\273\277\327\251\327\234\327\225\327\235, world '; \
	  printf '\360\237\230\200\n'; } > $@/seed-text
	printf '\002name,age\n"a, b",3\n' > $@/seed-csv
	printf '\001GIF89a\001\000\001\000<ScRiPt>alert(1)</script>' \
	    > $@/seed-polyglot
	printf '\002 <svg xmlns="http://www.w3.org/2000/svg"/>' > $@/seed-svg
	printf '\003\177ELF\002\001\001\000' > $@/seed-elf
