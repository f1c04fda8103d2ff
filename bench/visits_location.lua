-- POST /api/visits/:id/location over the bench nurse's 200 visits
local token = os.getenv("BENCH_TOKEN")
local prefix = os.getenv("BENCH_VISIT_PREFIX")

request = function()
    local id = string.format("%s%04d", prefix, math.random(1, 200))
    local body = string.format('{"lat":%.6f,"lng":%.6f}',
                               -26.2 + math.random() * 0.1,
                               28.0 + math.random() * 0.1)
    return wrk.format("POST", "/api/visits/" .. id .. "/location",
                      { ["Authorization"] = "Bearer " .. token,
                        ["Content-Type"] = "application/json" }, body)
end
