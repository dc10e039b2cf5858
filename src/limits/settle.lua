-- Settlement: what an answer actually used, added to its counters (the same
-- sums as src/limits/bucket.rs).
-- KEYS: the counters. ARGV[1]: now (epoch ms). Then three ARGV per key:
--   op     'a' add `amount` to a per-minute bucket (negative gives back),
--          'i' add `amount` nano-dollars to a budget
--   limit  per minute for buckets; for budgets, the ms the counter lives
--   amount tokens or requests (buckets); nano-dollars (budgets, an integer)
-- Returns one {a, b} per key: buckets {level after, now}, budgets {spent, 0}.
local now = tonumber(ARGV[1])
local results = {}
for i, key in ipairs(KEYS) do
  local op = ARGV[3 * i - 1]
  local limit = tonumber(ARGV[3 * i])
  local amount = ARGV[3 * i + 1]
  if op == 'i' then
    local spent = redis.call('INCRBY', key, amount)
    redis.call('PEXPIRE', key, limit)
    results[i] = {string.format('%d', spent), '0'}
  else
    local state = redis.call('HMGET', key, 'u', 'a')
    local used = tonumber(state[1] or '0')
    local at = tonumber(state[2] or '0')
    local level = math.max(0, used - math.max(0, now - at) * limit / 60000)
    level = math.max(0, level + tonumber(amount))
    if level > 0 then
      redis.call('HSET', key, 'u', string.format('%.6f', level), 'a', ARGV[1])
      redis.call('PEXPIRE', key, math.ceil(level / limit * 60000) + 1000)
    else
      redis.call('DEL', key)
    end
    results[i] = {string.format('%.6f', level), ARGV[1]}
  end
end
return results
