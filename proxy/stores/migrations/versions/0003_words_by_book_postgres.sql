-- Revision 0003_words_by_book on PostgreSQL, frozen: the vocabulary's trigram index leads with
-- study_book_id (btree_gin), so a typo lookup reads the searching user's words only.
-- Never edit it; a change is a new revision.

CREATE EXTENSION IF NOT EXISTS btree_gin;
CREATE INDEX IF NOT EXISTS cutover_search_words_book_trigram ON cutover_search_words
    USING GIN (study_book_id, word gin_trgm_ops);
DROP INDEX IF EXISTS cutover_search_words_trigram;
