// The app's own test, with Node's built-in runner (`node --test`, no dev dependency): the
// standard build runs it (`npm test`) before anything is pushed.
const test = require('node:test')
const assert = require('node:assert')
const http = require('node:http')
const app = require('../index.js')

function get(port, path) {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path }, (res) => {
      let body = ''
      res.on('data', (chunk) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode, body }))
    }).on('error', reject)
  })
}

test('GET / says which app it is', async () => {
  const server = app.listen(0, '127.0.0.1')
  await new Promise((resolve) => server.once('listening', resolve))
  try {
    const res = await get(server.address().port, '/')
    assert.strictEqual(res.status, 200)
    assert.strictEqual(JSON.parse(res.body).app, 'express-sample')
  } finally {
    server.close()
  }
})
