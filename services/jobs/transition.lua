-- Moves a job from one of the allowed states to a new one, setting fields as it goes, and
-- keeps the per-state index in step. running -> running (a redelivery taking over) needs
-- the running worker's lease to have expired. Every Redis call here counts against the
-- job's cost (the benchmark's commands per job), so the record is read once and written
-- once.
--
-- Fencing: a worker's run writes only while it still holds the job. Its writes carry the
-- attempt number its claim got (the fence); once another run took the job over (a new
-- attempt) or the job ended, the write is refused and counted, never merged.
--
-- Times that decide between hosts (lease_until, dispatched_at) are Redis's own clock
-- (TIME), so a worker whose clock runs ahead cannot keep a lease alive, or take one over,
-- early.
--
-- KEYS[1]    the job's hash (redis_keys.job(id))
-- KEYS[2]    the prefix of the per-state indexes (redis_keys.job_index("state", ""))
-- KEYS[3]    the counters hash (redis_keys.counters()), for refused writes
-- KEYS[4]    the metrics hash (redis_keys.metrics()): what Prometheus reads of every job,
--            counted here, in the script that records the move, so a move is counted
--            once and costs no round trip of its own (services/jobs/job_metrics.py
--            names the fields; BUCKETS, the histograms' bounds, is set before this text)
-- ARGV[1]    the states it may move from, comma separated
-- ARGV[2]    the job id, as the indexes hold it
-- ARGV[3]    the state it moves to
-- ARGV[4]    flags, any of: 'a' count an attempt; 'r' return the record as it is after
--            the move (saves the worker a round trip); 'e' start the record's TTL again,
--            so a job sent once more (a retry) cannot expire before it runs; 'l' set
--            lease_until to now + ARGV[5]; 'd' set dispatched_at to now + ARGV[5];
--            'v' the run starts from a message delivered again (counted); 't' the claim
--            rides on the worker's take (counted: worker/pipeline.py); 'u' a claim
--            given back, its message put back in the queue (not counted as a retry);
--            '-' none
-- ARGV[5]    seconds, for 'l' and 'd'
-- ARGV[6]    the TTL in seconds, for 'e'
-- ARGV[7]    the fence: the attempt number the writing run holds, or '' for a write
--            that is not a run's (a claim, a cancel)
-- ARGV[8..]  field, value, field, value, ... to set with the move
--
-- Returns {moved (1/0), previous state, refused (1/0)[, record as field, value, ...]},
-- refused being 1 when a fenced write was turned down; nil when the record does not
-- exist (expired, or never accepted).
--
-- The moves of many jobs can run in one call (transition_batch.lua, appended to this
-- text by services/jobs/store.py, is what a worker's group commit sends): each move is
-- checked and its record written at once, in order, while what they share is written
-- once at the end (flush): the index moves, one ZREM and one ZADD per state for all the
-- jobs, and the metrics, one HINCRBY per series however many jobs it counts; Redis's
-- clock is read once. A batch of n moves then costs about 2n commands, not 7n: the
-- benchmark's Redis commands per job. (A script runs alone, so nothing reads the indexes
-- or the metrics between a move and the flush.)

-- What the moves of this call share, written by flush() at the end.
local index_moves = {}   -- job id -> {prefix, state it left first, state it is in, score}
local index_order = {}   -- job ids in the order they first moved (deterministic flush)
local metric_adds = {}   -- metrics hash -> {field -> amount}
local metric_keys = {}   -- metrics hashes in the order first counted
local clock_now
-- Redis's clock, read once per call and only if a move needs it (a command counts: the
-- benchmark's commands per job).
local function now()
  if not clock_now then
    local clock = redis.call('TIME')
    clock_now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
  end
  return clock_now
end

local function transition(KEYS, ARGV)
  local rec = {}
  if string.find(ARGV[4], 'r') then
    local raw = redis.call('HGETALL', KEYS[1])
    for i = 1, #raw, 2 do rec[raw[i]] = raw[i + 1] end
  else
    local got = redis.call(
      'HMGET', KEYS[1], 'state', 'score', 'lease_until', 'attempts', 'started_at', 'spec')
    rec = {state = got[1], score = got[2], lease_until = got[3], attempts = got[4],
           started_at = got[5], spec = got[6]}
  end
  local state = rec['state']
  if not state then return false end

  -- Metrics: the labels (pool, workload) are the spec's, decoded only when a move counts.
  local labels
  local function count(kind, middle, by)
    if not labels then
      local ok, spec = pcall(cjson.decode, rec['spec'] or '')
      local pool, workload = 'unknown', 'unknown'
      if ok and type(spec) == 'table' then
        pool, workload = tostring(spec['pool'] or pool), tostring(spec['workload'] or workload)
      end
      labels = {pool .. '|', workload}
    end
    local adds = metric_adds[KEYS[4]]
    if not adds then
      adds = {}; metric_adds[KEYS[4]] = adds; metric_keys[#metric_keys + 1] = KEYS[4]
    end
    local name = kind .. '|' .. labels[1] .. middle .. labels[2]
    adds[name] = (adds[name] or 0) + by
  end
  -- A duration into its histogram: one field for its bucket, one for the sum (`total`).
  local function observe(kind, middle, total, seconds)
    if seconds < 0 then seconds = 0 end
    local bucket = #BUCKETS + 1
    for i = 1, #BUCKETS do
      if seconds <= BUCKETS[i] then bucket = i; break end
    end
    count(kind, middle .. bucket .. '|', 1)
    count(total, '', math.floor(seconds * 1000000 + 0.5))
  end

  local fence = ARGV[7]
  if fence ~= '' and (rec['attempts'] or '0') ~= fence then
    -- A run that no longer holds the job (another attempt took it over): its outcome, or
    -- its retry, is late.
    redis.call('HINCRBY', KEYS[1], 'refused_writes', 1)
    redis.call('HINCRBY', KEYS[3], 'refused_writes', 1)
    count('fenced', '', 1)
    return {0, state, 1}
  end
  local allowed = false
  for s in string.gmatch(ARGV[1], '[^,]+') do
    if s == state then allowed = true end
  end
  -- (A run that still holds its attempt but finds the job cancelled ends quietly.)
  if not allowed then return {0, state, 0} end
  local id, new_state = ARGV[2], ARGV[3]
  -- A job's first claim: its wait since submission goes into the queue-wait histogram.
  local first_run = string.find(ARGV[4], 'a') ~= nil and (rec['attempts'] or '0') == '0'
  local needs_clock = (state == 'running' and new_state == 'running')
    or string.find(ARGV[4], '[ld]') ~= nil or first_run
  local clock = needs_clock and now() or 0
  if state == 'running' and new_state == 'running' then
    -- Taking over a running job: only once the worker running it stopped renewing its lease.
    if tonumber(rec['lease_until'] or '0') > clock then return {0, state, 0} end
  end
  local sets = {'state', new_state}
  if string.find(ARGV[4], 'a') then
    sets[#sets + 1], sets[#sets + 2] = 'attempts', tostring(tonumber(rec['attempts'] or '0') + 1)
  end
  if string.find(ARGV[4], 'l') then
    sets[#sets + 1], sets[#sets + 2] = 'lease_until', tostring(clock + tonumber(ARGV[5]))
  end
  if string.find(ARGV[4], 'd') then
    sets[#sets + 1], sets[#sets + 2] = 'dispatched_at', tostring(clock + tonumber(ARGV[5]))
  end
  for i = 8, #ARGV do sets[#sets + 1] = ARGV[i] end
  redis.call('HSET', KEYS[1], unpack(sets))
  if string.find(ARGV[4], 'e') then redis.call('EXPIRE', KEYS[1], ARGV[6]) end
  if state ~= new_state then
    local earlier = index_moves[id]  -- this job moved before in this call
    if earlier then
      earlier[3] = new_state
    else
      index_moves[id] = {KEYS[2], state, new_state, rec['score']}
      index_order[#index_order + 1] = id
    end
  end

  -- What the move means for the metrics.
  if first_run then
    -- The index score is the submission time, in microseconds (on the API's host).
    observe('wait', '', 'wait_us', clock - tonumber(rec['score']) / 1000000)
  end
  if string.find(ARGV[4], 'v') and new_state == 'running' then count('redelivered', '', 1) end
  if string.find(ARGV[4], 't') and new_state == 'running' then count('claimed_on_take', '', 1) end
  if state == 'running' and new_state == 'queued' and not string.find(ARGV[4], 'u') then
    count('retried', '', 1)
  end
  if state ~= new_state
    and (new_state == 'succeeded' or new_state == 'failed' or new_state == 'cancelled') then
    -- The run time, when the outcome says when it finished: both times are the worker's.
    -- The start is the record's, or the outcome's own when it brings one (a job claimed
    -- on its worker's take starts later than its claim: worker/pipeline.py).
    local finished
    local started = tonumber(rec['started_at'] or '')
    for i = 8, #ARGV - 1, 2 do
      if ARGV[i] == 'finished_at' then finished = tonumber(ARGV[i + 1]) end
      if ARGV[i] == 'started_at' then started = tonumber(ARGV[i + 1]) end
    end
    if finished and started then
      observe('outcome', new_state .. '|', 'run_us', finished - started)
    else
      count('outcome', new_state .. '|0|', 1)
    end
  end
  if string.find(ARGV[4], 'r') then
    for i = 1, #sets, 2 do rec[sets[i]] = sets[i + 1] end
    local flat = {}
    for k, v in pairs(rec) do flat[#flat + 1] = k; flat[#flat + 1] = v end
    return {1, state, 0, flat}
  end
  return {1, state, 0}
end

-- Writes what the moves share: each job leaves the index of the state it was in before
-- its first move and joins the one of its state now (a job that moved twice in one call
-- is in one index, not two), one ZREM and one ZADD per index; and each metric once.
local function flush()
  local removes, adds, keys = {}, {}, {}
  local function into(lists, key)
    local list = lists[key]
    if not list then
      list = {}; lists[key] = list
      if not keys[key] then keys[key] = true; keys[#keys + 1] = key end
    end
    return list
  end
  for _, id in ipairs(index_order) do
    local moved = index_moves[id]
    if moved[2] ~= moved[3] then
      local gone = into(removes, moved[1] .. moved[2])
      gone[#gone + 1] = id
      local joined = into(adds, moved[1] .. moved[3])
      joined[#joined + 1] = moved[4]
      joined[#joined + 1] = id
    end
  end
  for _, key in ipairs(keys) do
    if removes[key] then redis.call('ZREM', key, unpack(removes[key])) end
  end
  for _, key in ipairs(keys) do
    if adds[key] then redis.call('ZADD', key, unpack(adds[key])) end
  end
  for _, key in ipairs(metric_keys) do
    for name, by in pairs(metric_adds[key]) do redis.call('HINCRBY', key, name, by) end
  end
end
