-- Creates job records (HSET + EXPIRE each), adds them to their indexes and pushes their
-- messages, atomically and in one round trip. Arguments are flat: Redis reads them for
-- nothing, where a JSON document of the same batch took cjson longer to decode than all
-- the commands took to run; and the index entries are built here rather than sent. Key
-- names come from services/core/redis_keys.py, as prefixes.
--
-- KEYS[1]    only with a limit (ARGV[8]): the counter of this second's requests of the
--            API key that sends the jobs (redis_keys.rate_window). The request is counted
--            here, in its write's round trip, instead of in one of its own (api/auth.py).
-- The other keys are built from the prefixes below (a batch touches thousands).
-- ARGV[1]    the records' TTL, seconds
-- ARGV[2]    the prefix of a job's hash (redis_keys.job(""))
-- ARGV[3]    the all-jobs index (redis_keys.job_index())
-- ARGV[4]    the prefix of the per-pool indexes
-- ARGV[5]    the prefix of the per-workload indexes
-- ARGV[6]    the prefix of the per-state indexes
-- ARGV[7]    N, the number of records
-- ARGV[8]    the API key's limit, requests a second; 0: nothing to count
-- then N times six arguments, one record each:
--            id, index score, state, pool, workload, spec (JSON)
-- then, for each queue with messages to push:
--            the number of payloads M, the queue's list key, the M payloads
--
-- Returns N; or, when the request is one past its key's limit, -C (C: the requests counted
-- this second), and nothing is written but the count.

local ttl, job_prefix, all_index = ARGV[1], ARGV[2], ARGV[3]
local pool_prefix, workload_prefix, state_prefix = ARGV[4], ARGV[5], ARGV[6]
local count = tonumber(ARGV[7])
local limit = tonumber(ARGV[8])
if limit > 0 then
  local counted = redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], 2)
  if counted > limit then return -counted end
end
local members, sizes = {}, {}
local function index(name, score, id)
  local list = members[name]
  if not list then list = {}; members[name] = list; sizes[name] = 0 end
  local n = sizes[name]
  list[n + 1], list[n + 2] = score, id
  sizes[name] = n + 2
end
local i = 9
for _ = 1, count do
  local id, score, state = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local key = job_prefix .. id
  redis.call('HSET', key, 'state', state, 'score', score, 'spec', ARGV[i + 5])
  redis.call('EXPIRE', key, ttl)
  index(all_index, score, id)
  index(pool_prefix .. ARGV[i + 3], score, id)
  index(workload_prefix .. ARGV[i + 4], score, id)
  index(state_prefix .. state, score, id)
  i = i + 6
end
for name, list in pairs(members) do redis.call('ZADD', name, unpack(list)) end
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call('LPUSH', unpack(ARGV, i + 1, i + 1 + n))
  i = i + n + 2
end
return count
