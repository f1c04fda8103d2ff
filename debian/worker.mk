# Included after worker/Makefile by debian/rules: the same compile, with
# Debian's CFLAGS and LDFLAGS, into $(OUT) instead of worker/ahava-worker.
$(OUT): $(SRCS) $(HDRS)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(WFLAGS) $(LDFLAGS) -o $@ $(SRCS) $(LDLIBS)
