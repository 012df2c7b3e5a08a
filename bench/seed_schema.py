"""The seed document's PostgreSQL schema and hybrid search query, verbatim.

The baselines of `bench/search.py` and `bench/backfill.py`, copied from the seed document
(seed/000_8bcb5f4eb90dbcb9.txt in the project's workspace, not in this repository;
`bench/search.py` checks the copy against it when it sits at ../shared/ beside the checkout).
`seed_ddl()` swaps uuid-ossp's `uuid_generate_v4()` for the built-in `gen_random_uuid()`, since
the embedded server has no uuid-ossp.
"""

from __future__ import annotations

SEED_DDL = """
-- Users テーブル
CREATE TABLE users (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    name VARCHAR(255) NOT NULL,
    email VARCHAR(255) UNIQUE NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

-- Study Books テーブル
CREATE TABLE study_books (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    title VARCHAR(500) NOT NULL,
    description TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE INDEX idx_study_books_user_id ON study_books(user_id);

-- Questions テーブル
CREATE TABLE questions (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    study_book_id UUID NOT NULL REFERENCES study_books(id) ON DELETE CASCADE,
    language VARCHAR(50) NOT NULL,
    category VARCHAR(100) NOT NULL,
    difficulty VARCHAR(50) NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    -- 全文検索用のtsvectorカラム
    search_vector tsvector GENERATED ALWAYS AS (
        to_tsvector('english', coalesce(question, '') || ' ' || coalesce(answer, ''))
    ) STORED
);

CREATE INDEX idx_questions_study_book_id ON questions(study_book_id);
CREATE INDEX idx_questions_search_vector ON questions USING GIN(search_vector);
CREATE INDEX idx_questions_trigram ON questions USING GIN(question gin_trgm_ops, answer gin_trgm_ops);

-- Typing Logs テーブル
CREATE TABLE typing_logs (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    question_id UUID REFERENCES questions(id) ON DELETE SET NULL,
    wpm INTEGER NOT NULL,
    accuracy DECIMAL(5,2) NOT NULL,
    took_ms INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE INDEX idx_typing_logs_user_id ON typing_logs(user_id);
CREATE INDEX idx_typing_logs_question_id ON typing_logs(question_id);
CREATE INDEX idx_typing_logs_created_at ON typing_logs(created_at);

-- Learning Events テーブル
CREATE TABLE learning_events (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    user_id VARCHAR(255) NOT NULL,
    app_id VARCHAR(100) NOT NULL,
    action VARCHAR(100) NOT NULL,
    object_id VARCHAR(255),
    score DECIMAL(10,2),
    duration_ms INTEGER,
    occurred_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);

CREATE INDEX idx_learning_events_user_occurred ON learning_events(user_id, occurred_at DESC);
CREATE INDEX idx_learning_events_action ON learning_events(action);
"""

SEED_QUERY = """
        SELECT DISTINCT
            q.id,
            q.question,
            q.answer,
            CASE 
                WHEN q.search_vector @@ plainto_tsquery('english', $1) THEN
                    ts_headline('english', q.question || ' ' || q.answer, plainto_tsquery('english', $1))
                ELSE
                    q.question || ' ' || q.answer
            END as highlight,
            COALESCE(
                ts_rank(q.search_vector, plainto_tsquery('english', $1)),
                similarity(q.question || ' ' || q.answer, $1) * 0.5
            ) as score
        FROM questions q
        JOIN study_books sb ON q.study_book_id = sb.id
        WHERE sb.user_id = $2
          AND (q.search_vector @@ plainto_tsquery('english', $1)
               OR (q.question || ' ' || q.answer) % $1)
        ORDER BY score DESC
        LIMIT $3;
        """


def seed_ddl() -> str:
    """The seed's DDL, runnable without the uuid-ossp extension."""
    return SEED_DDL.replace("uuid_generate_v4()", "gen_random_uuid()")
