// A Feide-like OpenID provider for Portvakt's end-to-end tests, built on the real
// `oidc-provider` (panva, 9.x): discovery, authorization code flow with PKCE, client
// authentication, signed id_tokens, JWKS and userinfo are all that library's own code.
//
// Usage: node feide_op.mjs CONFIG.json
// It listens on 127.0.0.1:0 and prints its issuer URL as the first line on stdout. It exits
// when its stdin closes, so a test that dies takes it along.
//
// CONFIG.json:
//   { "clients":  [{ "client_id", "client_secret", "redirect_uris": [...] }],
//     "accounts": { "<id>": { "userid_sec": ["feide:kari@skole.no"], "eppn": "kari@skole.no",
//                             "eduPersonAffiliation": ["student"], "norEduPersonBirthDate": "20080315",
//                             "feideYearOfBirth": 2008, "tamper": "<mode>" } } }
//
// What is Feide-like: the scopes (openid, userid, userid-feide, profile, groups-org), the
// claim names (https://n.feide.no/claims/userid_sec as an array of "feide:user@realm",
// https://n.feide.no/claims/eduPersonPrincipalName, eduPersonAffiliation), and the
// "extended userinfo" API at /userinfo/v1/userinfo, which answers with directory attributes
// for a valid access token, as api.dataporten.no does. Which scope carries the birth-date
// claims in real Feide depends on the attribute groups of the service; this peer puts
// them under OIDC's own `profile` scope (which carries `birthdate` in OIDC Core) in
// userinfo, and always in the extended userinfo.
//
// Login is a plain HTML form at /interaction/<uid> (no devInteractions): a test POSTs
// `account=<id>` to /interaction/<uid>/login, or POSTs /interaction/<uid>/abort to cancel.
// Consent is given automatically for whatever the client asked.
//
// Misbehaviour, for negative tests, is chosen per account by "tamper" and applied to the
// id_token in the token endpoint's real answer (test-only; real Feide does none of this):
//   iss, aud, exp, nonce  the claim is made wrong, then signed with the provider's own key
//   sig                   signed by a stranger's key under the provider's key id
//   kid                   signed by a stranger's key under a key id never published
//   hs256                 signed with HS256 using the client secret as the key
//   rotate                signed by a second key of the provider that /jwks publishes only
//                         from this moment on (key rotation: the client must refetch)
//   slow                  the token answer is held back for 5 seconds

import http from 'node:http';
import fs from 'node:fs';

import Provider from 'oidc-provider';
import * as jose from 'jose';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const accounts = config.accounts ?? {};

async function privateJwk(kid) {
  const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  return { ...(await jose.exportJWK(privateKey)), kid, alg: 'RS256', use: 'sig' };
}
function publicPart(jwk) {
  const { kty, n, e, kid, alg, use } = jwk;
  return { kty, n, e, kid, alg, use };
}

const mainKey = await privateJwk('feide-test-1');
const rotatedKey = await privateJwk('feide-test-2');
const strangerKey = await privateJwk('stranger');
let rotated = false;

function directory(id) {
  const a = accounts[id];
  const eppn = a.eppn ?? (a.userid_sec ?? []).find((u) => u.startsWith('feide:'))?.slice(6);
  return { a, eppn };
}

function findAccount(_ctx, id) {
  if (!accounts[id]) return undefined;
  const { a, eppn } = directory(id);
  return {
    accountId: id,
    async claims() {
      const c = { sub: id, name: a.name ?? `Test ${id}` };
      if (a.userid_sec) c['https://n.feide.no/claims/userid_sec'] = a.userid_sec;
      if (eppn) c['https://n.feide.no/claims/eduPersonPrincipalName'] = eppn;
      if (a.eduPersonAffiliation) c.eduPersonAffiliation = a.eduPersonAffiliation;
      if (a.norEduPersonBirthDate) c.norEduPersonBirthDate = a.norEduPersonBirthDate;
      if (a.feideYearOfBirth) c.feideYearOfBirth = a.feideYearOfBirth;
      return c;
    },
  };
}

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: (config.clients ?? []).map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    redirect_uris: c.redirect_uris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  })),
  findAccount,
  claims: {
    openid: ['sub'],
    userid: [],
    'userid-feide': [
      'https://n.feide.no/claims/userid_sec',
      'https://n.feide.no/claims/eduPersonPrincipalName',
    ],
    profile: ['name', 'norEduPersonBirthDate', 'feideYearOfBirth'],
    'groups-org': ['eduPersonAffiliation'],
  },
  scopes: ['openid', 'userid', 'userid-feide', 'profile', 'groups-org'],
  jwks: { keys: [mainKey] },
  cookies: { keys: ['feide-op-test-cookie-key'] },
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false } },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 60,
    IdToken: 600,
    Interaction: 600,
    Session: 600,
    Grant: 600,
  },
});

// The extended userinfo API, the id_token tampering and the key rotation live in one Koa
// middleware in front of the provider's own routes.
provider.use(async (ctx, next) => {
  if (ctx.path === '/userinfo/v1/userinfo') {
    await extendedUserinfo(ctx);
    return;
  }
  await next();
  if (ctx.path === '/token' && ctx.method === 'POST' && ctx.status === 200 && ctx.body?.id_token) {
    const payload = jose.decodeJwt(ctx.body.id_token);
    const mode = accounts[payload.sub]?.tamper;
    if (mode) ctx.body = { ...ctx.body, id_token: await tamper(mode, payload, ctx) };
  }
  if (ctx.path === '/jwks' && ctx.status === 200 && rotated) {
    ctx.body = { keys: [...ctx.body.keys, publicPart(rotatedKey)] };
  }
});

async function extendedUserinfo(ctx) {
  const auth = ctx.get('authorization');
  const value = auth.startsWith('Bearer ') ? auth.slice(7) : '';
  const token = value ? await provider.AccessToken.find(value) : undefined;
  if (!token || token.isExpired) {
    ctx.status = 401;
    ctx.body = { error: 'invalid_token' };
    return;
  }
  if (!accounts[token.accountId]) {
    ctx.status = 404;
    ctx.body = { error: 'not a Feide user' };
    return;
  }
  const { a, eppn } = directory(token.accountId);
  const scopes = new Set((token.scope ?? '').split(' '));
  const out = {};
  if (eppn && scopes.has('userid-feide')) out.eduPersonPrincipalName = eppn;
  if (a.eduPersonAffiliation) out.eduPersonAffiliation = a.eduPersonAffiliation;
  if (a.norEduPersonBirthDate) out.norEduPersonBirthDate = a.norEduPersonBirthDate;
  if (a.feideYearOfBirth) out.feideYearOfBirth = a.feideYearOfBirth;
  ctx.body = out;
}

async function sign(payload, jwk, kid, alg = 'RS256') {
  const key = alg === 'HS256' ? jwk : await jose.importJWK(jwk, alg);
  return new jose.SignJWT(payload).setProtectedHeader({ alg, kid, typ: 'JWT' }).sign(key);
}

async function tamper(mode, payload, ctx) {
  const now = Math.floor(Date.now() / 1000);
  switch (mode) {
    case 'iss':
      return sign({ ...payload, iss: 'http://127.0.0.1:9/not-feide' }, mainKey, mainKey.kid);
    case 'aud':
      return sign({ ...payload, aud: 'someone-else' }, mainKey, mainKey.kid);
    case 'exp':
      return sign({ ...payload, iat: now - 7200, exp: now - 3600 }, mainKey, mainKey.kid);
    case 'nonce':
      return sign({ ...payload, nonce: 'not-the-nonce-you-sent' }, mainKey, mainKey.kid);
    case 'sig':
      return sign(payload, strangerKey, mainKey.kid);
    case 'kid':
      return sign(payload, strangerKey, strangerKey.kid);
    case 'hs256': {
      const client = (config.clients ?? []).find((c) => c.client_id === payload.aud);
      return sign(payload, new TextEncoder().encode(client?.client_secret ?? ''), undefined, 'HS256');
    }
    case 'rotate':
      rotated = true;
      return sign(payload, rotatedKey, rotatedKey.kid);
    case 'slow':
      await new Promise((resolve) => setTimeout(resolve, 5000));
      return ctx.body.id_token;
    default:
      throw new Error(`unknown tamper mode ${mode}`);
  }
}

function page(res, status, html) {
  res.statusCode = status;
  res.setHeader('content-type', 'text/html; charset=utf-8');
  res.end(`<!doctype html><html lang="nb"><meta charset="utf-8"><title>Feide (test)</title>${html}</html>`);
}

async function formBody(req) {
  let body = '';
  for await (const chunk of req) body += chunk;
  return new URLSearchParams(body);
}

async function interaction(req, res) {
  const url = new URL(req.url, issuer);
  const details = await provider.interactionDetails(req, res);
  const { uid, prompt, params, session } = details;
  if (prompt.name === 'login') {
    if (req.method === 'POST' && url.pathname.endsWith('/login')) {
      const account = (await formBody(req)).get('account');
      if (!accounts[account]) {
        page(res, 400, '<p>Ukjent bruker</p>');
        return;
      }
      await provider.interactionFinished(req, res, { login: { accountId: account } }, { mergeWithLastSubmission: false });
      return;
    }
    if (req.method === 'POST' && url.pathname.endsWith('/abort')) {
      await provider.interactionFinished(req, res, {
        error: 'access_denied',
        error_description: 'End-User aborted interaction',
      }, { mergeWithLastSubmission: false });
      return;
    }
    const options = Object.keys(accounts).map((a) => `<option value="${a}">${a}</option>`).join('');
    page(res, 200, `<h1>Logg inn med Feide</h1><p>Klient: ${params.client_id}</p>
<form method="post" action="/interaction/${uid}/login"><select name="account">${options}</select>
<button type="submit">Logg inn</button></form>
<form method="post" action="/interaction/${uid}/abort"><button type="submit">Avbryt</button></form>`);
    return;
  }
  if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }
  page(res, 400, `<p>Unexpected prompt ${prompt.name}</p>`);
}

const callback = provider.callback();
server.on('request', (req, res) => {
  if (req.url.startsWith('/interaction/')) {
    interaction(req, res).catch((err) => page(res, 400, `<p>${String(err.message)}</p>`));
    return;
  }
  callback(req, res);
});

console.log(issuer);
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
