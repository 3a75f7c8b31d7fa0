-- Many moves in one call (transition.lua, above this text): a worker's group commit
-- sends the claims and outcomes of the jobs it runs at once this way
-- (services/jobs/group_commit.py). Each move is checked and written as if it were alone,
-- in order; what they share is written once at the end (flush).
--
-- KEYS       the keys of every move, one move's after another's
-- ARGV[1]    how many moves
-- ARGV[2..]  for each move: how many keys, how many arguments, then its arguments
--
-- Returns one answer per move, in order, each what transition.lua answers alone; a move
-- that failed answers {-1, its error} and the others stand (as they would in a pipeline).

local answers, k, a = {}, 1, 2
for m = 1, tonumber(ARGV[1]) do
  local nkeys, nargs = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local keys, args = {}, {}
  for i = 1, nkeys do keys[i] = KEYS[k + i - 1] end
  for i = 1, nargs do args[i] = ARGV[a + 1 + i] end
  k, a = k + nkeys, a + 2 + nargs
  local ok, answer = pcall(transition, keys, args)
  if not ok then
    answer = {-1, type(answer) == 'table' and (answer.err or answer.message) or tostring(answer)}
  end
  -- false, not nil: a nil would end the array Redis returns.
  answers[m] = answer or false
end
flush()
return answers
