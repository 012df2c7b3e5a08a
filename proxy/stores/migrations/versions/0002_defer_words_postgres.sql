-- Revision 0002_defer_words on PostgreSQL, frozen: the vocabulary's trigger functions return
-- at once in a session with cutover.defer_words on (a backfill counts every word once, at the end).
-- Never edit it; a change is a new revision.

CREATE OR REPLACE FUNCTION cutover_words_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    emptied_books uuid[];
    emptied_words text[];
BEGIN
    IF current_setting('cutover.defer_words', true) = 'on' THEN
        RETURN NULL;  -- a backfill's session: it counts every word once, at the end
    END IF;
    WITH counted AS (
        INSERT INTO cutover_search_words AS s (study_book_id, word, questions)
        SELECT b, w, sum(n) FROM (SELECT t.study_book_id AS b, d.w, 1 AS n FROM cutover_new_questions t, LATERAL (SELECT DISTINCT w FROM cutover_document_words(t.question || ' ' || t.answer) AS w) d) c GROUP BY b, w HAVING sum(n) <> 0 ORDER BY b, w
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

CREATE OR REPLACE FUNCTION cutover_words_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    emptied_books uuid[];
    emptied_words text[];
BEGIN
    IF current_setting('cutover.defer_words', true) = 'on' THEN
        RETURN NULL;  -- a backfill's session: it counts every word once, at the end
    END IF;
    WITH counted AS (
        INSERT INTO cutover_search_words AS s (study_book_id, word, questions)
        SELECT b, w, sum(n) FROM (SELECT t.study_book_id AS b, d.w, -1 AS n FROM cutover_old_questions t, LATERAL (SELECT DISTINCT w FROM cutover_document_words(t.question || ' ' || t.answer) AS w) d UNION ALL SELECT t.study_book_id AS b, d.w, 1 AS n FROM cutover_new_questions t, LATERAL (SELECT DISTINCT w FROM cutover_document_words(t.question || ' ' || t.answer) AS w) d) c GROUP BY b, w HAVING sum(n) <> 0 ORDER BY b, w
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

CREATE OR REPLACE FUNCTION cutover_words_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    emptied_books uuid[];
    emptied_words text[];
BEGIN
    IF current_setting('cutover.defer_words', true) = 'on' THEN
        RETURN NULL;  -- a backfill's session: it counts every word once, at the end
    END IF;
    WITH counted AS (
        INSERT INTO cutover_search_words AS s (study_book_id, word, questions)
        SELECT b, w, sum(n) FROM (SELECT t.study_book_id AS b, d.w, -1 AS n FROM cutover_old_questions t, LATERAL (SELECT DISTINCT w FROM cutover_document_words(t.question || ' ' || t.answer) AS w) d) c GROUP BY b, w HAVING sum(n) <> 0 ORDER BY b, w
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
