-- Renews the leases a worker process holds, in one round trip, and tells it which it lost.
--
-- A lease is renewed only for the run that holds it: the job still running under the
-- attempt number the run's claim got. The new lease_until is Redis's clock plus the
-- lease, and never earlier than the one recorded: a renewal delayed in the network
-- cannot move a lease backwards, into the past, where a takeover would find it lapsed.
--
-- KEYS[1..n]   the jobs' hashes
-- ARGV[1]      the lease, in seconds
-- ARGV[2..n+1] the attempt number each run holds, in the order of KEYS
--
-- Returns {position, why, ...} (positions 1-based, in the order of KEYS) of the leases no
-- longer held: why 'taken' when another attempt holds the job (the run must stop), 'ended'
-- when the job left running under this same attempt (its own outcome, a cancel) or its
-- record is gone.

local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local until_ = now + tonumber(ARGV[1])
local lost = {}
for i, key in ipairs(KEYS) do
  local got = redis.call('HMGET', key, 'state', 'attempts', 'lease_until')
  if got[1] and (got[2] or '0') ~= ARGV[i + 1] then
    lost[#lost + 1] = i
    lost[#lost + 1] = 'taken'
  elseif got[1] ~= 'running' then
    lost[#lost + 1] = i
    lost[#lost + 1] = 'ended'
  elseif until_ > tonumber(got[3] or '0') then
    redis.call('HSET', key, 'lease_until', tostring(until_))
  end
end
return lost
