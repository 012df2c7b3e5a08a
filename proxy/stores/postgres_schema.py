"""The PostgreSQL schema: the seed's tables and types, with its search defects fixed.

Fixed against the seed (see notes/search-pitfalls.md):
- The text search configuration `cutover_search` stems with Snowball's original Porter algorithm
  (the one FTS5's `porter` tokenizer runs), folds accents with `unaccent` and keeps stop words
  (FTS5 has none), so both engines read the same words the same way.
- The document is split on every non-alphanumeric character before parsing, as FTS5's unicode61
  does: PostgreSQL's parser would otherwise keep `json.dumps` as one `host` token.
- The typo fallback looks words up in a vocabulary (`cutover_search_words`, the distinct words
  of each study book's questions, with a trigram index; a search reads only the searching
  user's books) and searches the corrections with full text, instead
  of a trigram index over whole documents: a typo of a common word then costs a few lookups and
  one GIN scan, not word similarity over every document that resembles it.
Added: `row_version` on every table (DEFAULT 0: a plain INSERT or COPY of the seed's columns
still works), the outbox, tombstones and `legacy_ids`.
"""

from __future__ import annotations

SEARCH_DOCUMENT = "(question || ' ' || answer)"

# one row, updated by a synchronous commit to flush the WAL past asynchronous mirror commits
# (also created on first use, for a database whose schema predates it)
WAL_FLUSHES = """
CREATE TABLE IF NOT EXISTS cutover_wal_flushes (
    id INT PRIMARY KEY CHECK (id = 1),
    flushes BIGINT NOT NULL
);
"""

# A session with this setting 'on' leaves the vocabulary alone: the backfill loads questions so,
# then recounts every book's words in one statement (WORDS_FILL) instead of a statement per
# batch whose plan depends on the statistics of a table growing under it.
DEFER_WORDS = "cutover.defer_words"

# The vocabulary counted from scratch, in one set-based pass over the questions (of the books
# `{books}` selects: the backfill counts disjoint ranges of books side by side).
WORDS_COUNT = """
SELECT q.study_book_id, d.w, count(*) FROM questions q,
    LATERAL (SELECT DISTINCT w
             FROM cutover_document_words(q.question || ' ' || q.answer) AS w) d
WHERE {books}
GROUP BY 1, 2
"""
WORDS_FILL = "INSERT INTO cutover_search_words " + WORDS_COUNT.format(books="true")
# the trigram index leads with the book: a typo lookup reads the searching user's words only
WORDS_INDEX_NAME = "cutover_search_words_book_trigram"
WORDS_INDEX = f"""
CREATE INDEX IF NOT EXISTS {WORDS_INDEX_NAME} ON cutover_search_words
    USING GIN (study_book_id, word gin_trgm_ops)
"""


def _note_words(op: str, counted: tuple[tuple[str, int], ...]) -> str:
    """The trigger function that counts the words of the transition tables `counted` (name,
    +1 or -1) into the vocabulary, for the trigger `op`."""
    parts = " UNION ALL ".join(
        f"SELECT t.study_book_id AS b, d.w, {sign} AS n FROM {table} t, LATERAL (SELECT "
        "DISTINCT w FROM cutover_document_words(t.question || ' ' || t.answer) AS w) d"
        for table, sign in counted)
    return f"""
CREATE OR REPLACE FUNCTION cutover_words_{op}() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    emptied_books uuid[];
    emptied_words text[];
BEGIN
    IF current_setting('{DEFER_WORDS}', true) = 'on' THEN
        RETURN NULL;  -- a backfill's session: it counts every word once, at the end
    END IF;
    WITH counted AS (
        INSERT INTO cutover_search_words AS s (study_book_id, word, questions)
        SELECT b, w, sum(n) FROM ({parts}) c GROUP BY b, w HAVING sum(n) <> 0 ORDER BY b, w
        ON CONFLICT (study_book_id, word) DO UPDATE SET questions = s.questions + excluded.questions
        RETURNING s.study_book_id, s.word, s.questions)
    SELECT array_agg(study_book_id), array_agg(word) INTO emptied_books, emptied_words
    FROM counted WHERE questions <= 0;
    IF emptied_words IS NOT NULL THEN
        DELETE FROM cutover_search_words s
        USING unnest(emptied_books, emptied_words) AS e(b, w)
        WHERE s.study_book_id = e.b AND s.word = e.w AND s.questions <= 0;
    END IF;
    RETURN NULL;
END
$$;
"""


_NEW, _OLD = ("cutover_new_questions", 1), ("cutover_old_questions", -1)
_NOTE_WORDS = (_note_words("inserted", (_NEW,)) + _note_words("updated", (_OLD, _NEW))
               + _note_words("deleted", (_OLD,)))


DDL = r"""
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE EXTENSION IF NOT EXISTS btree_gin;
CREATE EXTENSION IF NOT EXISTS unaccent;
CREATE EXTENSION IF NOT EXISTS fuzzystrmatch;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_ts_dict WHERE dictname = 'cutover_porter') THEN
        CREATE TEXT SEARCH DICTIONARY cutover_porter (TEMPLATE = snowball, Language = porter);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_ts_config WHERE cfgname = 'cutover_search') THEN
        CREATE TEXT SEARCH CONFIGURATION cutover_search (COPY = simple);
        ALTER TEXT SEARCH CONFIGURATION cutover_search
            ALTER MAPPING FOR asciiword, word, numword, asciihword, hword, hword_part,
                              hword_asciipart, hword_numpart
            WITH unaccent, cutover_porter;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'cutover_tsquery_and') THEN
        CREATE AGGREGATE cutover_tsquery_and(tsquery) (SFUNC = tsquery_and, STYPE = tsquery);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'cutover_tsquery_or') THEN
        CREATE AGGREGATE cutover_tsquery_or(tsquery) (SFUNC = tsquery_or, STYPE = tsquery);
    END IF;
END
$$;

-- pg_trgm declares word similarity as cheap as an integer comparison (COST 1). It is not: over a
-- question and its answer it costs about what reading a page does. Told so, the planner tests
-- it after every cheaper condition (when the fuzzy branch filtered questions by it: a one-word
-- misspelling on the 5,280-question parity corpus, up to 130 ms -> up to 44 ms; it now scores
-- at most FTS_CANDIDATES questions and looks words up in the vocabulary). Only the extension's
-- owner may change it: without the privilege the planner keeps its guess.
DO $$
BEGIN
    ALTER FUNCTION word_similarity_op(text, text) COST 500;
    ALTER FUNCTION word_similarity_commutator_op(text, text) COST 500;
    ALTER FUNCTION word_similarity(text, text) COST 500;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'cutover: pg_trgm''s word similarity keeps its cost estimate (not the owner)';
END
$$;

-- Every run of characters other than letters, digits and spaces becomes a space. Plain spaces
-- are left alone: the parser skips blanks without counting positions, so the words, and the
-- tsvector, are the same as replacing every non-alphanumeric run, while the regexp matches only
-- the punctuation instead of every space (a fifth of the search_vector cost of a COPY).
CREATE OR REPLACE FUNCTION cutover_words(doc text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN regexp_replace(doc, '[^[:alnum:] ]+', ' ', 'g');

-- every term a phrase of its words, all terms required: the FTS5 side's `"a b" "c"`
CREATE OR REPLACE FUNCTION cutover_tsquery(terms text[]) RETURNS tsquery
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    BEGIN ATOMIC
        SELECT coalesce(
            cutover_tsquery_and(phraseto_tsquery('cutover_search', cutover_words(t))),
            ''::tsquery)
        FROM unnest(terms) AS t;
    END;

CREATE TABLE IF NOT EXISTS users (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) NOT NULL,
    email VARCHAR(255) UNIQUE NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    row_version BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS study_books (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    title VARCHAR(500) NOT NULL,
    description TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    row_version BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS idx_study_books_user_id ON study_books(user_id);

CREATE TABLE IF NOT EXISTS questions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    study_book_id UUID NOT NULL REFERENCES study_books(id) ON DELETE CASCADE,
    language VARCHAR(50) NOT NULL,
    category VARCHAR(100) NOT NULL,
    difficulty VARCHAR(50) NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    row_version BIGINT NOT NULL DEFAULT 0,
    search_vector tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('cutover_search'::regconfig, cutover_words(question)), 'A') ||
        setweight(to_tsvector('cutover_search'::regconfig, cutover_words(answer)), 'B')
    ) STORED
);
CREATE INDEX IF NOT EXISTS idx_questions_study_book_id ON questions(study_book_id);

CREATE TABLE IF NOT EXISTS typing_logs (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    question_id UUID REFERENCES questions(id) ON DELETE SET NULL,
    wpm INTEGER NOT NULL,
    accuracy DECIMAL(5,2) NOT NULL,
    took_ms INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    row_version BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS idx_typing_logs_user_id ON typing_logs(user_id);
CREATE INDEX IF NOT EXISTS idx_typing_logs_question_id ON typing_logs(question_id);
CREATE INDEX IF NOT EXISTS idx_typing_logs_created_at ON typing_logs(created_at);

CREATE TABLE IF NOT EXISTS learning_events (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id VARCHAR(255) NOT NULL,
    app_id VARCHAR(100) NOT NULL,
    action VARCHAR(100) NOT NULL,
    object_id VARCHAR(255),
    score DECIMAL(10,2),
    duration_ms INTEGER,
    occurred_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    row_version BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS idx_learning_events_user_occurred
    ON learning_events(user_id, occurred_at DESC);
CREATE INDEX IF NOT EXISTS idx_learning_events_action ON learning_events(action);

CREATE TABLE IF NOT EXISTS cutover_outbox (
    seq BIGSERIAL PRIMARY KEY,
    target TEXT NOT NULL,
    entity TEXT NOT NULL,
    op TEXT NOT NULL,
    row_id UUID NOT NULL,
    version BIGINT NOT NULL,
    payload JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    dead BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS idx_cutover_outbox_pending ON cutover_outbox(target, dead, seq);

CREATE TABLE IF NOT EXISTS cutover_control (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    read_primary TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    dual_write BOOLEAN NOT NULL,
    env_applied TEXT NOT NULL,
    file_word TEXT
);

CREATE TABLE IF NOT EXISTS cutover_tombstones (
    entity TEXT NOT NULL,
    row_id UUID NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (entity, row_id)
);

CREATE TABLE IF NOT EXISTS legacy_ids (
    table_name TEXT NOT NULL,
    legacy_id TEXT NOT NULL,
    id UUID NOT NULL,
    PRIMARY KEY (table_name, legacy_id)
);
""" + WAL_FLUSHES + r"""
-- The fuzzy branch's vocabulary: per study book, the distinct words of its questions and answers
-- (lower case, split as cutover_words splits) and how many of its questions hold each, kept by
-- statement triggers on questions (COPY and the backfill included; a delete cascaded from a
-- study book or a user too). A search corrects its words only from the searching user's own
-- books, and a word leaves with the last question that holds it: one user's words never
-- change what another's typos are corrected to (issue 24: with one vocabulary for everyone, a
-- probe question told whether any other user had written a word). Per study book rather than
-- per user: a question names its book, so a trigger never reads study_books (gone already in a
-- cascaded delete) and a book given to another user takes its words along.
-- A document's words: split on every run of non-alphanumeric characters, lower case, at most 64
-- characters. Not STRICT, so that the planner inlines it where it is called in FROM (the
-- trigger, the fuzzy branch): a STRICT set-returning function runs as a function call per row,
-- its rows gathered in a tuplestore. And split by cutover_words and a plain space rather than
-- by a regexp: the words are the same, but the distinct words of 100k questions (24 MB of
-- text) took one backend 4.5 s that way (regexp_split_to_table, STRICT), 1.8-1.9 s this way;
-- a backfill into an empty table defers the triggers and counts every word once (WORDS_FILL).
CREATE OR REPLACE FUNCTION cutover_document_words(doc text) RETURNS SETOF text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    BEGIN ATOMIC
        SELECT w FROM string_to_table(lower(cutover_words(doc)), ' ') AS w
        WHERE w <> '' AND length(w) <= 64;
    END;

DO $$
BEGIN
    -- the vocabulary of every user in one table (before issue 24): rebuilt per study book
    IF to_regclass('cutover_search_words') IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('cutover_search_words')
            AND attname = 'study_book_id' AND NOT attisdropped) THEN
        DROP TABLE cutover_search_words;
    END IF;
    IF to_regclass('cutover_search_words') IS NULL THEN
        CREATE TABLE cutover_search_words (
            study_book_id UUID NOT NULL,
            word TEXT NOT NULL,
            questions INT NOT NULL,
            PRIMARY KEY (study_book_id, word)
        );
        """ + WORDS_FILL + ";" + WORDS_INDEX + r""";
        -- the fuzzy branch used to scan it; now only writes would pay for it
        DROP INDEX IF EXISTS idx_questions_trigram;
    END IF;
END
$$;

-- One statement per trigger: each question's distinct words count +1 (new rows) or -1 (old
-- rows) for its book, summed per (book, word); the non-zero sums are added in key order (so two
-- writers never wait on each other in opposite orders), and the words no question of the book
-- holds any more are deleted. An update that leaves the text and the book alone changes nothing.
""" + _NOTE_WORDS + r"""
CREATE OR REPLACE TRIGGER cutover_words_inserted AFTER INSERT ON questions
    REFERENCING NEW TABLE AS cutover_new_questions
    FOR EACH STATEMENT EXECUTE FUNCTION cutover_words_inserted();
CREATE OR REPLACE TRIGGER cutover_words_updated AFTER UPDATE ON questions
    REFERENCING OLD TABLE AS cutover_old_questions NEW TABLE AS cutover_new_questions
    FOR EACH STATEMENT EXECUTE FUNCTION cutover_words_updated();
CREATE OR REPLACE TRIGGER cutover_words_deleted AFTER DELETE ON questions
    REFERENCING OLD TABLE AS cutover_old_questions
    FOR EACH STATEMENT EXECUTE FUNCTION cutover_words_deleted();
DROP FUNCTION IF EXISTS cutover_note_words();
-- Fired whatever session_replication_role says: a logical replica's vocabulary must follow its
-- questions too, and the backfill loads questions as `replica` (no per-row foreign key checks,
-- one anti-join at the end: 0.55 s of the server's CPU for 100k questions) only because these
-- still fire then.
ALTER TABLE questions ENABLE ALWAYS TRIGGER cutover_words_inserted;
ALTER TABLE questions ENABLE ALWAYS TRIGGER cutover_words_updated;
ALTER TABLE questions ENABLE ALWAYS TRIGGER cutover_words_deleted;
"""

# Tables the schema's triggers fill from a table's writes: the backfill analyzes them with it.
DERIVED_TABLES = {"questions": ("cutover_search_words",)}

# Built last (and by the backfill after a bulk load): building GIN indexes over loaded rows is
# several times faster than maintaining them row by row.
SEARCH_INDEXES = """
CREATE INDEX IF NOT EXISTS idx_questions_search_vector ON questions USING GIN (search_vector);
"""
