-- GET /api/messages/visit/:id as the bench nurse: 20 decrypted messages of 100
wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
wrk.path = "/api/messages/visit/" .. os.getenv("BENCH_VISIT_PREFIX") .. "0001"
