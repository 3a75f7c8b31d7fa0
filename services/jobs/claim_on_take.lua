-- A take that also claims the jobs it took (worker/pipeline.py): take.lua's work, wrapped
-- above this text as take(KEYS, ARGV), then each run_job message's job moved from queued
-- to running for this worker, as the claim of worker/tasks.py would move it (transition.lua,
-- above too). The pool process that runs the job then starts it at once: the claim rode
-- on the take's round trip instead of costing one of its own.
--
-- Only a job's plain message is claimed here: not one delivered again, due later (a
-- retry's countdown), or sent to take a job over; those, and any job not queued, are
-- left to the pool process, which claims them as it always has.
--
-- KEYS       take.lua's
-- ARGV[1]    the lease, seconds (from Redis's clock)
-- ARGV[2]    the prefix of a job's hash key (redis_keys.job(""))
-- ARGV[3]    the prefix of the per-state indexes (redis_keys.job_index("state", ""))
-- ARGV[4]    the counters hash; ARGV[5] the metrics hash (see transition.lua)
-- ARGV[6]    the task name of a job's message
-- ARGV[7]    this worker's host; ARGV[8] its Celery node name
-- ARGV[9..]  take.lua's ARGV
--
-- Returns {list key, message, claim, ...}: claim is transition.lua's answer with the
-- record (moved or not) and then the job id, or nil when the message was not one to
-- claim here or its record is gone.

local OWN = 8
local UUID = '%x%x%x%x%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x'
local take_argv = {}
for i = OWN + 1, #ARGV do take_argv[#take_argv + 1] = ARGV[i] end
local now = take_argv[2]

-- A JSON null decodes to cjson.null, which Lua counts as true.
local function given(value)
  return value ~= nil and value ~= cjson.null and value ~= false
end

local function claim(item)
  local ok, message = pcall(cjson.decode, item)
  if not ok or type(message) ~= 'table' then return false end
  local headers, properties = message['headers'], message['properties']
  if type(headers) ~= 'table' or headers['task'] ~= ARGV[6] then return false end
  if given(headers['eta']) or given(headers['redelivered']) then return false end
  local info = type(properties) == 'table' and properties['delivery_info']
  if type(info) == 'table' and given(info['redelivered']) then return false end
  local argsrepr, task_id = headers['argsrepr'], headers['id']
  -- The job id is the task's one argument: Celery shows it in argsrepr, "['<uuid>']".
  -- Read from text meant for display, so the pool process checks it against the
  -- argument it runs with (worker/tasks.py); a message to take a job over finds the
  -- job running and is not claimed here.
  local id = type(argsrepr) == 'string' and string.match(argsrepr, UUID)
  if not id or type(task_id) ~= 'string' then return false end
  -- A claim that fails (a record of another shape) leaves its message to the pool
  -- process, as transition_batch.lua leaves a failed move: the messages are taken and
  -- recorded as unacknowledged already, and the indexes are written by flush().
  local ok, answer = pcall(transition,
    {ARGV[2] .. id, ARGV[3], ARGV[4], ARGV[5]},
    {'queued', id, 'running', 'arlt', ARGV[1], '0', '',
     'received_at', now, 'started_at', now, 'worker_host', ARGV[7], 'worker_node', ARGV[8],
     'worker_pid', '', 'task_id', task_id})
  if not ok or not answer then return false end
  answer[#answer + 1] = id  -- the record's hash does not hold it
  return answer
end

local taken = take(KEYS, take_argv)
local answers = {}
for i = 1, #taken, 2 do
  answers[#answers + 1] = taken[i]
  answers[#answers + 1] = taken[i + 1]
  answers[#answers + 1] = claim(taken[i + 1])
end
flush()
return answers
