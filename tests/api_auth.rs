//! Sign-up, login, tokens, API keys and roles over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, code};
use palaver::model::Role;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[actix_web::test]
async fn signup_login_refresh_and_me() {
    let server = TestServer::start().await;
    let (status, signed) = server
        .call(
            Method::POST,
            "/v1/auth/signup",
            None,
            Some(json!({"email": "Ada@Example.com", "password": "correct horse battery", "organization_name": "Analytical"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{signed}");
    assert_eq!(
        signed["user"]["email"], "ada@example.com",
        "emails are stored lower-case"
    );
    assert_eq!(
        signed["user"]["role"], "admin",
        "the founder administers the new organization"
    );
    assert!(
        !signed.to_string().contains("correct horse"),
        "the password never comes back"
    );
    let access = signed["access_token"].as_str().unwrap();

    let (status, me) = server.get("/v1/users/me", access).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["credential"], "user");
    assert_eq!(me["organization"]["name"], "Analytical");

    let login = |password: &'static str| {
        server.call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": "ada@example.com", "password": password})),
        )
    };
    let (status, wrong) = login("wrong password!!").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&wrong), "unauthorized");
    let (status, logged) = login("correct horse battery").await;
    assert_eq!(status, StatusCode::OK, "{logged}");

    let refresh = logged["refresh_token"].as_str().unwrap();
    let (status, body) = server.get("/v1/assistants", refresh).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a refresh token is not an API credential"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("refresh"),
        "{body}"
    );
    let (status, renewed) = server
        .call(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": refresh})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    let (status, _) = server
        .get("/v1/assistants", renewed["access_token"].as_str().unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .call(
            Method::POST,
            "/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": access})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "an access token cannot be refreshed"
    );
}

#[actix_web::test]
async fn signup_can_be_disabled_and_duplicate_users_conflict() {
    let server = TestServer::start_with(|s| s.auth.allow_signup = false).await;
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/auth/signup",
            None,
            Some(json!({"email": "a@b.co", "password": "correct horse battery", "organization_name": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let t = server.tenant("acme").await;
    let new_user =
        json!({"email": "bob@example.com", "password": "correct horse battery", "role": "member"});
    let (status, created) = server.post("/v1/users", &t.key, new_user.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (status, dup) = server.post("/v1/users", &t.key, new_user).await;
    assert_eq!(status, StatusCode::CONFLICT, "{dup}");
    let (status, weak) = server
        .post(
            "/v1/users",
            &t.key,
            json!({"email": "c@example.com", "password": "short", "role": "member"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(weak["error"]["field"], "password");
}

#[actix_web::test]
async fn api_keys_are_shown_once_listed_by_prefix_and_revocable() {
    let server = TestServer::start().await;
    let t = server.tenant("acme").await;
    let (status, created) = server
        .post("/v1/api-keys", &t.key, json!({"name": "backend"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(created["prefix"].as_str().unwrap()));

    let (status, listed) = server.get("/v1/api-keys", &key).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!listed.to_string().contains(&key), "lists never show a key");
    assert!(
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["id"] == created["id"])
    );
    let mine = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == created["id"])
        .unwrap();
    assert!(mine["last_used_at"].is_string(), "using a key records when");

    // The stored hash is not the key.
    let id = palaver::ids::ApiKeyId(created["id"].as_i64().unwrap());
    let org = t.org;
    let stored = server
        .state
        .db
        .run(move |c| {
            palaver::store::api_keys::list(
                c,
                org,
                palaver::store::PageRequest {
                    after: None,
                    limit: 100,
                },
            )
        })
        .await
        .unwrap()
        .0
        .into_iter()
        .find(|k| k.id == id)
        .unwrap();
    assert!(stored.key_hash.starts_with("$argon2id$"));
    assert!(!stored.key_hash.contains(&key));

    let (status, revoked) = server
        .delete(&format!("/v1/api-keys/{}", id.0), &t.key)
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    let (status, body) = server.get("/v1/assistants", &key).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );
}

#[actix_web::test]
async fn roles_decide_who_manages_keys_users_and_others_assistants() {
    let server = TestServer::start().await;
    let t = server.tenant("acme").await;
    let (_, member) = server.user(t.org, Role::Member).await;
    let (_, other_member) = server.user(t.org, Role::Member).await;
    let (_, manager) = server.user(t.org, Role::Manager).await;
    let (_, admin) = server.user(t.org, Role::Admin).await;

    // Keys and users: admins only (API keys act as admins).
    for token in [&member, &manager] {
        let (status, body) = server
            .post("/v1/api-keys", token, json!({"name": "x"}))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let (status, _) = server
            .post("/v1/users", token, json!({"email": "z@example.com", "password": "correct horse battery", "role": "admin"}))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = server
            .patch("/v1/organization", token, json!({"name": "mine"}))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
    let (status, _) = server
        .post("/v1/api-keys", &admin, json!({"name": "x"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = server.get("/v1/users", &member).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server.get("/v1/users", &manager).await;
    assert_eq!(status, StatusCode::OK);

    // Assistants: members change their own; managers and admins any.
    let own = server.assistant(&member, "member's").await;
    let theirs = server.assistant(&other_member, "someone else's").await;
    let (status, _) = server
        .patch(
            &format!("/v1/assistants/{own}"),
            &member,
            json!({"name": "renamed"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = server
        .patch(
            &format!("/v1/assistants/{theirs}"),
            &member,
            json!({"name": "mine now"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = server
        .delete(&format!("/v1/assistants/{theirs}"), &member)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = server
        .get(&format!("/v1/assistants/{theirs}"), &member)
        .await;
    assert_eq!(status, StatusCode::OK, "members still read every assistant");
    let (status, _) = server
        .patch(
            &format!("/v1/assistants/{theirs}"),
            &manager,
            json!({"name": "managed"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .delete(&format!("/v1/assistants/{theirs}"), &admin)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // Members can start sessions of any assistant.
    server.session(&member, own).await;
}

#[actix_web::test]
async fn login_asks_which_organization_when_an_email_is_in_several() {
    let server = TestServer::start().await;
    let mut orgs = Vec::new();
    for name in ["one", "two"] {
        let t = server.tenant(name).await;
        let (status, body) = server
            .post("/v1/users", &t.key, json!({"email": "sam@example.com", "password": "correct horse battery", "role": "member"}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        orgs.push(t.org);
    }
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": "sam@example.com", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "organization_id");
    let (status, body) = server
        .call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": "sam@example.com", "password": "correct horse battery", "organization_id": orgs[1].0})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["organization_id"], orgs[1].0);
}
