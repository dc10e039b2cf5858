-- Admission, atomically over every counter a request is checked against
-- (the same sums as src/limits/bucket.rs).
-- KEYS: the counters. ARGV[1]: now (epoch ms). Then three ARGV per key:
--   op     't' take `amount` from a per-minute bucket (written only when every
--              check passes), 'p' peek (the same test, nothing written),
--          's' a budget: refused when what is spent reaches `limit` (0: read only)
--   limit  per minute for buckets; nano-dollars for budgets
--   amount requests or tokens (buckets); unused for budgets
-- Returns one {ok, a, b} per key: buckets {ok, level before, now}, budgets
-- {ok, spent, 0}; numbers as strings (Lua numbers would come back truncated).
local now = tonumber(ARGV[1])
local results = {}
local writes = {}
local all = true
for i, key in ipairs(KEYS) do
  local op = ARGV[3 * i - 1]
  local limit = tonumber(ARGV[3 * i])
  local amount = tonumber(ARGV[3 * i + 1])
  if op == 's' then
    local spent = redis.call('GET', key) or '0'
    local ok = limit <= 0 or tonumber(spent) < limit
    if not ok then all = false end
    results[i] = {ok and 1 or 0, spent, '0'}
  else
    local state = redis.call('HMGET', key, 'u', 'a')
    local used = tonumber(state[1] or '0')
    local at = tonumber(state[2] or '0')
    local level = math.max(0, used - math.max(0, now - at) * limit / 60000)
    local ok = level + amount <= limit
    if not ok then all = false end
    if op == 't' then
      writes[#writes + 1] = {key, level + amount, limit}
    end
    results[i] = {ok and 1 or 0, string.format('%.6f', level), ARGV[1]}
  end
end
if all then
  for _, w in ipairs(writes) do
    redis.call('HSET', w[1], 'u', string.format('%.6f', w[2]), 'a', ARGV[1])
    redis.call('PEXPIRE', w[1], math.ceil(w[2] / w[3] * 60000) + 1000)
  end
end
return results
