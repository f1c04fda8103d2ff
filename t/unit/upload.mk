# The parsers of uploads in ngx_ahava_upload/, free of nginx: the streaming
# multipart/form-data parser and the file type sniffer.

# This fragment is read before the Makefile's own rules: keep `make` with
# no goal meaning `make all`, not the first target below.

.DEFAULT_GOAL := all

UPLOAD     = ../../ngx_ahava_upload

UNIT_BINS += $(BUILD)/multipart_test $(BUILD)/sniff_test
UNIT_RUNS += ; $(BUILD)/multipart_test; $(BUILD)/sniff_test

$(BUILD)/multipart_test: multipart_test.c $(UPLOAD)/ngx_ahava_multipart.c \
                         $(UPLOAD)/ngx_ahava_multipart.h $(BUILD)/flags
	$(CC) $(ALLFLAGS) -I$(UPLOAD) -o $@ multipart_test.c \
	    $(UPLOAD)/ngx_ahava_multipart.c

$(BUILD)/sniff_test: sniff_test.c $(UPLOAD)/ngx_ahava_sniff.c \
                     $(UPLOAD)/ngx_ahava_sniff.h $(BUILD)/flags
	$(CC) $(ALLFLAGS) -I$(UPLOAD) -o $@ sniff_test.c \
	    $(UPLOAD)/ngx_ahava_sniff.c
