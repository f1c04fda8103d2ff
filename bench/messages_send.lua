-- POST /api/messages: encrypt + insert + publish, into the bench's visit 2
local token = os.getenv("BENCH_TOKEN")
local visit = os.getenv("BENCH_VISIT_PREFIX") .. "0002"

request = function()
    local body = string.format(
        '{"visitId":"%s","recipientId":"cbenchpatient00000000001",' ..
        '"content":"Vitals at %d: BP 120/80, pulse 72, all well."}',
        visit, math.random(1, 1000000))
    return wrk.format("POST", "/api/messages",
                      { ["Authorization"] = "Bearer " .. token,
                        ["Content-Type"] = "application/json" }, body)
end
