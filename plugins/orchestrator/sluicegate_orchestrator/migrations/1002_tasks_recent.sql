-- Every tenant's tasks newest first (the operator's view in the admin console:
-- TaskStore.page with no tenant) without sorting the whole table.
CREATE INDEX tasks_recent ON tasks (created_at DESC, id DESC);
