-- GET /api/visits as the bench nurse: 20 rows of 200, role-filtered
wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
wrk.path = "/api/visits?limit=20"
